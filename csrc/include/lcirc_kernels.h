// Plain C API of the lcirc CUDA kernels: raw device pointers, sizes and a stream, no torch.
//
// All tensors are contiguous, row-major, on the device of the current CUDA context. Every
// function launches asynchronously on `stream` and returns the launch status (cudaSuccess, or
// cudaErrorInvalidValue for bad sizes/pointers).
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element types of activations.
typedef enum { LCIRC_FLOAT32 = 0, LCIRC_FLOAT16 = 1, LCIRC_BFLOAT16 = 2 } lcirc_dtype_t;

// Gated residual forward: y = x + tanh(gate) * o.
//   x, o, y [rows, cols] of `dtype`; gate fp32 with gate_numel = 1 or cols elements.
cudaError_t lcirc_gated_residual_fwd(const void* x, const void* o, const float* gate, void* y,
                                     int64_t rows, int64_t cols, int64_t gate_numel,
                                     lcirc_dtype_t dtype, cudaStream_t stream);

// fp32 elements of the workspace lcirc_gated_residual_bwd needs.
int64_t lcirc_gated_residual_bwd_workspace_numel(int64_t rows, int64_t cols);

// Gated residual backward (dx = dy is left to the caller):
//   d_o    [rows, cols] of `dtype` = tanh(gate) * dy
//   d_gate [gate_numel] fp32       = sum(dy * o) * (1 - tanh(gate)^2), summed over all elements
//                                    (scalar gate) or over rows (per-channel gate)
// in a deterministic two-stage reduction through `workspace`.
cudaError_t lcirc_gated_residual_bwd(const void* dy, const void* o, const float* gate,
                                     void* d_o, float* d_gate, float* workspace, int64_t rows,
                                     int64_t cols, int64_t gate_numel, lcirc_dtype_t dtype,
                                     cudaStream_t stream);

#ifdef __cplusplus
}
#endif
