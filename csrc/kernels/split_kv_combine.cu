// Split-KV combine: merge per-chunk attention outputs and log-sum-exps (see lcirc_kernels.h).
//
// One warp per query row. Every lane computes the merged LSE (the chunk LSEs are warp-broadcast
// loads), the lanes write the chunk weights to shared memory once, then each lane accumulates
// its head-dim columns over the chunks in index order.
#include "common.cuh"

namespace lcirc {
namespace {

constexpr int kRowsPerBlock = 4;
constexpr int64_t kMaxSplits = 1024;

template <typename T>
__global__ void split_kv_combine_kernel(const float* __restrict__ o_part,
                                        const float* __restrict__ lse_part,
                                        T* __restrict__ out, float* __restrict__ lse_out,
                                        int64_t splits, int64_t rows, int64_t head_dim) {
  extern __shared__ float weights[];  // [kRowsPerBlock, splits]
  const int lane = threadIdx.x;
  const int64_t row = (int64_t)blockIdx.x * kRowsPerBlock + threadIdx.y;
  float* w = weights + (int64_t)threadIdx.y * splits;
  if (row < rows) {
    const float lse = combine_lse(lse_part + row, splits, rows);
    for (int64_t c = lane; c < splits; c += 32) w[c] = combine_weight(lse_part[c * rows + row], lse);
    if (lane == 0) lse_out[row] = lse;
  }
  __syncwarp();
  if (row >= rows) return;
  const int64_t chunk_stride = rows * head_dim;
  for (int64_t d = lane; d < head_dim; d += 32) {
    const float* src = o_part + row * head_dim + d;
    float acc = 0.f;
    for (int64_t c = 0; c < splits; ++c) {
      const float wc = w[c];
      // Skip empty chunks so their (possibly unwritten) partial output is never read.
      if (wc != 0.f) acc = fma_accumulate(acc, wc, src[c * chunk_stride]);
    }
    out[row * head_dim + d] = from_float<T>(acc);
  }
}

}  // namespace
}  // namespace lcirc

extern "C" cudaError_t lcirc_split_kv_combine(const float* o_part, const float* lse_part,
                                              void* out, float* lse_out, int64_t splits,
                                              int64_t rows, int64_t head_dim,
                                              lcirc_dtype_t out_dtype, cudaStream_t stream) {
  using namespace lcirc;
  if (splits < 1 || splits > kMaxSplits || rows < 0 || head_dim < 1) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (!o_part || !lse_part || !out || !lse_out) return cudaErrorInvalidValue;
  const dim3 block(32, kRowsPerBlock);
  const int64_t blocks = ceil_div(rows, kRowsPerBlock);
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidValue;
  const size_t smem = sizeof(float) * kRowsPerBlock * splits;
  LCIRC_DISPATCH_DTYPE(out_dtype, split_kv_combine_kernel<scalar_t><<<(unsigned)blocks, block, smem, stream>>>(
      o_part, lse_part, static_cast<scalar_t*>(out), lse_out, splits, rows, head_dim));
  return cudaGetLastError();
}
