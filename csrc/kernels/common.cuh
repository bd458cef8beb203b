// Internal helpers of the lcirc kernels: dtype conversion and launch-size checks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "lcirc_kernels.h"
#include "lcirc_math.h"

namespace lcirc {

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// N elements of T loaded and stored as one aligned vector.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

inline bool aligned_to(const void* p, uintptr_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) % bytes) == 0;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Dispatch `body` with `scalar_t` bound to the C++ type of an lcirc_dtype_t.
#define LCIRC_DISPATCH_DTYPE(DTYPE, ...)                 \
  switch (DTYPE) {                                       \
    case LCIRC_FLOAT32: {                                \
      using scalar_t = float;                            \
      __VA_ARGS__;                                       \
      break;                                             \
    }                                                    \
    case LCIRC_FLOAT16: {                                \
      using scalar_t = __half;                           \
      __VA_ARGS__;                                       \
      break;                                             \
    }                                                    \
    case LCIRC_BFLOAT16: {                               \
      using scalar_t = __nv_bfloat16;                    \
      __VA_ARGS__;                                       \
      break;                                             \
    }                                                    \
    default:                                             \
      return cudaErrorInvalidValue;                      \
  }

}  // namespace lcirc
