"""Triton kernels for the gated residual epilogue y = x + tanh(g) * branch.

The gate is read from device memory (no host sync). The gate gradient is reduced in two fixed-order
stages: per-program fp32 partial sums of dy * branch, then one program sums them.

``n`` is specialised (not ``do_not_specialize``): when it is a multiple of 16, as for any hidden
size that is, the compiler knows the tail mask is constant over 16 elements and emits 16-byte
vector loads and stores; other lengths compile to a scalar variant.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tanh(g):
    """tanh in the accumulator dtype, written with exp so it runs on every backend."""
    a = tl.abs(g)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    return tl.where(g < 0, -t, t)


@triton.jit
def _gated_fwd_kernel(X, Y, G, OUT, n, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """OUT = X + tanh(G) * Y over n flat elements."""
    start = tl.program_id(0).to(tl.int64) * BLOCK
    offs = tl.arange(0, BLOCK)
    mask = offs < n - start
    t = _tanh(tl.load(G).to(ACC))
    x = tl.load(X + start + offs, mask=mask, other=0.0).to(ACC)
    y = tl.load(Y + start + offs, mask=mask, other=0.0).to(ACC)
    tl.store(OUT + start + offs, (x + t * y).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _gated_bwd_kernel(DOUT, Y, G, DY, PART, n, NEED_DY: tl.constexpr, NEED_DG: tl.constexpr,
                      ACC: tl.constexpr, BLOCK: tl.constexpr):
    """DY = tanh(G) * DOUT; PART[pid] = sum over the block of DOUT * Y."""
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * BLOCK
    offs = tl.arange(0, BLOCK)
    mask = offs < n - start
    dout = tl.load(DOUT + start + offs, mask=mask, other=0.0).to(ACC)
    if NEED_DG:
        y = tl.load(Y + start + offs, mask=mask, other=0.0).to(ACC)
        tl.store(PART + pid, tl.sum(dout * y, 0))
    if NEED_DY:
        t = _tanh(tl.load(G).to(ACC))
        tl.store(DY + start + offs, (t * dout).to(DY.dtype.element_ty), mask=mask)


@triton.jit
def _gate_grad_kernel(PART, G, DG, num_parts, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """DG = (sum_i PART[i]) * (1 - tanh(G)^2), summed block by block in a fixed order."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    for start in range(0, num_parts, BLOCK):
        acc += tl.load(PART + start + offs, mask=start + offs < num_parts, other=0.0).to(ACC)
    t = _tanh(tl.load(G).to(ACC))
    tl.store(DG, (tl.sum(acc, 0) * (1.0 - t * t)).to(DG.dtype.element_ty))
