// Host (CPU) reference of the lcirc CUDA kernels, built from the same lcirc_math.h helpers and
// in the same summation order as csrc/kernels/*.cu. All arrays are contiguous fp32.
// Compiled into a small shared library for tests (ctypes); needs no CUDA toolkit.
// Every function returns 0 on success and -1 on invalid sizes or null pointers.
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "lcirc_math.h"

using namespace lcirc;

extern "C" {

// y = x + tanh(gate) * o over [rows, cols]; gate has 1 or cols elements.
int lcirc_host_gated_residual_fwd(const float* x, const float* o, const float* gate, float* y,
                                  int64_t rows, int64_t cols, int64_t gate_numel) {
  if (rows < 0 || cols < 1 || !(gate_numel == 1 || gate_numel == cols)) return -1;
  if (!x || !o || !gate || !y) return -1;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const float t = tanhf(gate_at(gate, gate_numel, c));
      y[r * cols + c] = gated_residual(x[r * cols + c], o[r * cols + c], t);
    }
  return 0;
}

int64_t lcirc_host_gate_workspace_numel(int64_t rows, int64_t cols) {
  return gate_workspace_numel(rows, cols);
}

// d_o = tanh(gate) * dy; d_gate = reduced sum(dy * o) * (1 - tanh(gate)^2).
// `partial` (may be null) receives the stage-1 sums, gate_workspace_numel(rows, cols) floats.
int lcirc_host_gated_residual_bwd(const float* dy, const float* o, const float* gate, float* d_o,
                                  float* d_gate, float* partial, int64_t rows, int64_t cols,
                                  int64_t gate_numel) {
  if (rows < 0 || cols < 1 || !(gate_numel == 1 || gate_numel == cols)) return -1;
  if (!dy || !o || !gate || !d_o || !d_gate) return -1;
  const int64_t chunks = gate_row_chunks(rows);
  const int64_t n = chunks * cols;
  float* ws = partial;
  if (!ws) {
    ws = static_cast<float*>(malloc(sizeof(float) * (n > 0 ? n : 1)));
    if (!ws) return -1;
  }
  // Stage 1.
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t r0 = chunk * kGateRowsPerChunk;
    const int64_t r1 = r0 + kGateRowsPerChunk < rows ? r0 + kGateRowsPerChunk : rows;
    for (int64_t col = 0; col < cols; ++col) {
      const float t = tanhf(gate_at(gate, gate_numel, col));
      float acc = 0.f;
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t idx = r * cols + col;
        acc = fma_accumulate(acc, dy[idx], o[idx]);
        d_o[idx] = t * dy[idx];
      }
      ws[chunk * cols + col] = acc;
    }
  }
  // Stage 2.
  if (gate_numel == 1) {
    float buf[kReduceThreads];
    for (int i = 0; i < kReduceThreads; ++i) buf[i] = strided_sum(ws, n, i, kReduceThreads);
    for (int s = kReduceThreads / 2; s > 0; s >>= 1)
      for (int i = 0; i < s; ++i) buf[i] += buf[i + s];
    d_gate[0] = buf[0] * tanh_grad(tanhf(gate[0]));
  } else {
    for (int64_t col = 0; col < cols; ++col)
      d_gate[col] = strided_sum(ws, n, col, cols) * tanh_grad(tanhf(gate[col]));
  }
  if (!partial) free(ws);
  return 0;
}

}  // extern "C"
