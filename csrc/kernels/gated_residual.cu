// Gated residual epilogue y = x + tanh(g) * o and its backward (see lcirc_kernels.h).
//
// Forward: a grid-stride elementwise kernel, 16-byte vectors when the row length and the
// pointers allow it. Backward: stage 1 writes d_o and per-(row chunk, column) partial sums of
// dy*o; stage 2 reduces the partials in a fixed order (lcirc_math.h), so d_gate is bitwise
// deterministic.
#include "common.cuh"

namespace lcirc {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 20;

template <typename T, int VEC>
__global__ void gated_residual_fwd_kernel(const T* __restrict__ x, const T* __restrict__ o,
                                          const float* __restrict__ gate, T* __restrict__ y,
                                          int64_t n_vec, int64_t cols, int64_t gate_numel) {
  using P = Pack<T, VEC>;
  const float t_scalar = tanhf(gate[0]);
  const int64_t step = (int64_t)gridDim.x * blockDim.x;
  for (int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; v < n_vec; v += step) {
    const P xv = reinterpret_cast<const P*>(x)[v];
    const P ov = reinterpret_cast<const P*>(o)[v];
    const int64_t col0 = (v * VEC) % cols;
    P yv;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
      const float t = gate_numel == 1 ? t_scalar : tanhf(gate[col0 + i]);
      yv.v[i] = from_float<T>(gated_residual(to_float(xv.v[i]), to_float(ov.v[i]), t));
    }
    reinterpret_cast<P*>(y)[v] = yv;
  }
}

template <typename T>
__global__ void gated_residual_bwd_stage1(const T* __restrict__ dy, const T* __restrict__ o,
                                          const float* __restrict__ gate, T* __restrict__ d_o,
                                          float* __restrict__ partial, int64_t rows,
                                          int64_t cols, int64_t gate_numel) {
  const int64_t chunk = blockIdx.x;
  const int64_t col = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  const float t = tanhf(gate_at(gate, gate_numel, col));
  const int64_t r0 = chunk * kGateRowsPerChunk;
  const int64_t r1 = r0 + kGateRowsPerChunk < rows ? r0 + kGateRowsPerChunk : rows;
  float acc = 0.f;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t idx = r * cols + col;
    const float g = to_float(dy[idx]);
    acc = fma_accumulate(acc, g, to_float(o[idx]));
    d_o[idx] = from_float<T>(t * g);
  }
  partial[chunk * cols + col] = acc;
}

// Per-channel gate: d_gate[col] = sum over chunks of partial[chunk, col].
__global__ void gated_residual_bwd_stage2_channel(const float* __restrict__ partial,
                                                  const float* __restrict__ gate,
                                                  float* __restrict__ d_gate, int64_t chunks,
                                                  int64_t cols) {
  const int64_t col = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  const float s = strided_sum(partial, chunks * cols, col, cols);
  d_gate[col] = s * tanh_grad(tanhf(gate[col]));
}

// Scalar gate: one block, lane sums then a fixed pairwise tree.
__global__ void gated_residual_bwd_stage2_scalar(const float* __restrict__ partial,
                                                 const float* __restrict__ gate,
                                                 float* __restrict__ d_gate, int64_t n) {
  __shared__ float buf[kReduceThreads];
  const int tid = threadIdx.x;
  buf[tid] = strided_sum(partial, n, tid, kReduceThreads);
  __syncthreads();
  for (int s = kReduceThreads / 2; s > 0; s >>= 1) {
    if (tid < s) buf[tid] += buf[tid + s];
    __syncthreads();
  }
  if (tid == 0) d_gate[0] = buf[0] * tanh_grad(tanhf(gate[0]));
}

template <typename T>
cudaError_t launch_fwd(const T* x, const T* o, const float* gate, T* y, int64_t rows,
                       int64_t cols, int64_t gate_numel, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const int64_t n = rows * cols;
  const bool vec_ok = cols % kVec == 0 && aligned_to(x, 16) && aligned_to(o, 16) && aligned_to(y, 16);
  const int64_t n_vec = vec_ok ? n / kVec : n;
  int64_t blocks = ceil_div(n_vec, kThreads);
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  if (vec_ok)
    gated_residual_fwd_kernel<T, kVec><<<(unsigned)blocks, kThreads, 0, stream>>>(x, o, gate, y, n_vec, cols, gate_numel);
  else
    gated_residual_fwd_kernel<T, 1><<<(unsigned)blocks, kThreads, 0, stream>>>(x, o, gate, y, n_vec, cols, gate_numel);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const T* dy, const T* o, const float* gate, T* d_o, float* d_gate,
                       float* workspace, int64_t rows, int64_t cols, int64_t gate_numel,
                       cudaStream_t stream) {
  const int64_t chunks = gate_row_chunks(rows);
  const int64_t col_blocks = ceil_div(cols, kThreads);
  if (chunks > 0x7fffffffLL || col_blocks > 65535) return cudaErrorInvalidValue;
  gated_residual_bwd_stage1<T><<<dim3((unsigned)chunks, (unsigned)col_blocks), kThreads, 0, stream>>>(
      dy, o, gate, d_o, workspace, rows, cols, gate_numel);
  if (gate_numel == 1)
    gated_residual_bwd_stage2_scalar<<<1, kReduceThreads, 0, stream>>>(workspace, gate, d_gate, chunks * cols);
  else
    gated_residual_bwd_stage2_channel<<<(unsigned)col_blocks, kThreads, 0, stream>>>(workspace, gate, d_gate, chunks, cols);
  return cudaGetLastError();
}

bool bad_shape(int64_t rows, int64_t cols, int64_t gate_numel) {
  return rows < 0 || cols < 1 || !(gate_numel == 1 || gate_numel == cols);
}

}  // namespace
}  // namespace lcirc

extern "C" cudaError_t lcirc_gated_residual_fwd(const void* x, const void* o, const float* gate,
                                                void* y, int64_t rows, int64_t cols,
                                                int64_t gate_numel, lcirc_dtype_t dtype,
                                                cudaStream_t stream) {
  using namespace lcirc;
  if (bad_shape(rows, cols, gate_numel)) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (!x || !o || !gate || !y) return cudaErrorInvalidValue;
  LCIRC_DISPATCH_DTYPE(dtype, return launch_fwd<scalar_t>(
      static_cast<const scalar_t*>(x), static_cast<const scalar_t*>(o), gate,
      static_cast<scalar_t*>(y), rows, cols, gate_numel, stream));
  return cudaSuccess;
}

extern "C" int64_t lcirc_gated_residual_bwd_workspace_numel(int64_t rows, int64_t cols) {
  return lcirc::gate_workspace_numel(rows, cols);
}

extern "C" cudaError_t lcirc_gated_residual_bwd(const void* dy, const void* o, const float* gate,
                                                void* d_o, float* d_gate, float* workspace,
                                                int64_t rows, int64_t cols, int64_t gate_numel,
                                                lcirc_dtype_t dtype, cudaStream_t stream) {
  using namespace lcirc;
  if (bad_shape(rows, cols, gate_numel)) return cudaErrorInvalidValue;
  if (!gate || !d_gate) return cudaErrorInvalidValue;
  if (rows == 0) return cudaMemsetAsync(d_gate, 0, sizeof(float) * gate_numel, stream);
  if (!dy || !o || !d_o || !workspace) return cudaErrorInvalidValue;
  LCIRC_DISPATCH_DTYPE(dtype, return launch_bwd<scalar_t>(
      static_cast<const scalar_t*>(dy), static_cast<const scalar_t*>(o), gate,
      static_cast<scalar_t*>(d_o), d_gate, workspace, rows, cols, gate_numel, stream));
  return cudaSuccess;
}
