// Shared element-level math of the lcirc CUDA kernels.
//
// Every function here is `__host__ __device__` under nvcc and plain `inline` under a host C++
// compiler, so the kernels (csrc/kernels/*.cu) and the host reference (csrc/reference/) run the
// same arithmetic in the same order. Reductions use fmaf and a fixed summation order, so the
// gated-residual gate gradient is bitwise reproducible between runs and between host and device.
#pragma once

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define LCIRC_HD __host__ __device__ __forceinline__
#else
#define LCIRC_HD inline
#endif

namespace lcirc {

// ---- gated residual: y = x + tanh(g) * o -------------------------------------------------
// x, o, y are [rows, cols]; the gate g has 1 element (one scalar gate) or `cols` elements
// (one gate per channel).

LCIRC_HD float gate_at(const float* gate, int64_t gate_numel, int64_t col) {
  return gate[gate_numel == 1 ? 0 : col];
}

LCIRC_HD float gated_residual(float x, float o, float t) { return fmaf(t, o, x); }

// d tanh(g) / d g = 1 - tanh(g)^2, written in terms of t = tanh(g).
LCIRC_HD float tanh_grad(float t) { return fmaf(-t, t, 1.f); }

// The gate gradient sum(dy * o) is reduced in two deterministic stages:
//  stage 1: rows are cut into chunks of kGateRowsPerChunk; for every (chunk, col) the products
//           dy*o are accumulated over the chunk's rows in increasing row order
//           -> partial[chunk * cols + col];
//  stage 2: per-channel gate: partial[:, col] is summed over chunks in increasing order;
//           scalar gate: kReduceThreads lanes each sum partial[lane], partial[lane + T], ...
//           in order, then a fixed pairwise tree (s = T/2, T/4, ..., 1: v[i] += v[i + s]).
constexpr int64_t kGateRowsPerChunk = 64;
constexpr int kReduceThreads = 256;

LCIRC_HD int64_t gate_row_chunks(int64_t rows) {
  return (rows + kGateRowsPerChunk - 1) / kGateRowsPerChunk;
}

// Number of fp32 values of the stage-1 workspace.
LCIRC_HD int64_t gate_workspace_numel(int64_t rows, int64_t cols) {
  return gate_row_chunks(rows) * cols;
}

LCIRC_HD float fma_accumulate(float acc, float a, float b) { return fmaf(a, b, acc); }

// Sequential sum of p[start], p[start + step], ... below n.
LCIRC_HD float strided_sum(const float* p, int64_t n, int64_t start, int64_t step) {
  float acc = 0.f;
  for (int64_t i = start; i < n; i += step) acc += p[i];
  return acc;
}

}  // namespace lcirc
