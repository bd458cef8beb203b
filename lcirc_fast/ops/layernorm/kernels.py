"""Triton kernels for LayerNorm(x + add) over the last dim, with an add that repeats every P rows.

Rows are the flattened leading dims of x ([N, d], contiguous). ``add`` ([P, d], P divides N) is
added to row r as add[r % P] (e.g. a position table [L, d] broadcast over the batch of x [B, L, d];
without it P = N). The forward stores per-row mean and rstd (fp32); the backward recomputes the
normalised input. Program g of the backward owns positions [g*RP, (g+1)*RP) for every batch copy,
so d(add) needs no atomics, and dweight/dbias are reduced in two fixed-order stages.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["N", "P"])
def _ln_fwd_kernel(X, ADD, W, B, Y, MEAN, RSTD, N, P, d, eps,
                   HAS_ADD: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                   STORE_STATS: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    r_mask = rows < N
    c_mask = cols < d
    mask = r_mask[:, None] & c_mask[None, :]
    x = tl.load(X + rows[:, None] * d + cols[None, :], mask=mask, other=0.0).to(ACC)
    if HAS_ADD:
        x += tl.load(ADD + (rows % P)[:, None] * d + cols[None, :], mask=mask, other=0.0).to(ACC)
    mean = tl.sum(x, 1) / d
    xc = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, 1) / d
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(W + cols, mask=c_mask, other=0.0).to(ACC)[None, :]
    if HAS_B:
        y = y + tl.load(B + cols, mask=c_mask, other=0.0).to(ACC)[None, :]
    tl.store(Y + rows[:, None] * d + cols[None, :], y.to(Y.dtype.element_ty), mask=mask)
    if STORE_STATS:
        tl.store(MEAN + rows, mean, mask=r_mask)
        tl.store(RSTD + rows, rstd, mask=r_mask)


@triton.jit(do_not_specialize=["P", "NB", "RP"])
def _ln_bwd_kernel(X, ADD, W, MEAN, RSTD, DY, DX, DADD, DWP, DBP, P, NB, RP, d,
                   HAS_ADD: tl.constexpr, HAS_W: tl.constexpr, NEED_DX: tl.constexpr,
                   NEED_DADD: tl.constexpr, NEED_DWB: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """dx = rstd * (w*dy - mean(w*dy) - xhat * mean(w*dy*xhat)); dadd[p] = sum_b dx[b*P + p];
    DWP[g] / DBP[g] = this program's partial sums of dy*xhat / dy."""
    g = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    c_mask = cols < d
    if HAS_W:
        w = tl.load(W + cols, mask=c_mask, other=0.0).to(ACC)
    dw = tl.zeros([BLOCK_D], ACC)
    db = tl.zeros([BLOCK_D], ACC)
    lo = g * RP
    hi = tl.minimum(lo + RP, P)
    for p0 in range(lo, hi, BLOCK_R):
        pos = (p0 + tl.arange(0, BLOCK_R)).to(tl.int64)
        p_mask = pos < hi
        mask = p_mask[:, None] & c_mask[None, :]
        if HAS_ADD:
            a = tl.load(ADD + pos[:, None] * d + cols[None, :], mask=mask, other=0.0).to(ACC)
        dadd = tl.zeros([BLOCK_R, BLOCK_D], ACC)
        for bb in range(NB):
            rows = bb * P + pos
            offs = rows[:, None] * d + cols[None, :]
            x = tl.load(X + offs, mask=mask, other=0.0).to(ACC)
            if HAS_ADD:
                x += a
            mean = tl.load(MEAN + rows, mask=p_mask, other=0.0).to(ACC)
            rstd = tl.load(RSTD + rows, mask=p_mask, other=0.0).to(ACC)
            xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
            dy = tl.load(DY + offs, mask=mask, other=0.0).to(ACC)
            if HAS_W:
                wdy = dy * w[None, :]
            else:
                wdy = dy
            c1 = tl.sum(xhat * wdy, 1) / d
            c2 = tl.sum(wdy, 1) / d
            dx = tl.where(mask, (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None], 0.0)
            if NEED_DX:
                tl.store(DX + offs, dx.to(DX.dtype.element_ty), mask=mask)
            if NEED_DADD:
                dadd += dx
            if NEED_DWB:
                dw += tl.sum(dy * xhat, 0)
                db += tl.sum(dy, 0)
        if NEED_DADD:
            tl.store(DADD + pos[:, None] * d + cols[None, :], dadd.to(DADD.dtype.element_ty), mask=mask)
    if NEED_DWB:
        tl.store(DWP + g.to(tl.int64) * d + cols, dw, mask=c_mask)
        tl.store(DBP + g.to(tl.int64) * d + cols, db, mask=c_mask)


@triton.jit
def _col_sum_kernel(PART, OUT, G, d, ACC: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr):
    """OUT[c] = sum_g PART[g, c], in a fixed order."""
    pid = tl.program_id(0)
    cols = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cols < d
    acc = tl.zeros([BLOCK_G, BLOCK_C], ACC)
    offs_g = tl.arange(0, BLOCK_G)
    for g0 in range(0, G, BLOCK_G):
        gs = (g0 + offs_g).to(tl.int64)
        acc += tl.load(PART + gs[:, None] * d + cols[None, :],
                       mask=(gs < G)[:, None] & c_mask[None, :], other=0.0).to(ACC)
    tl.store(OUT + cols, tl.sum(acc, 0).to(OUT.dtype.element_ty), mask=c_mask)
