"""Triton kernels for non-causal cross-attention (online softmax in the exp2 domain).

Layout: q [B, Lq, H, D] (or packed [Tq, H, D] with cu_seqlens_q), k/v [B, Lk, H, D] (or packed
[Tk, H, D] with cu_seqlens_k); the last dim must be contiguous. Per (batch, head) the kernels see
``q_len`` queries and ``k_len`` keys, from dense shapes, ``kv_lengths`` or ``cu_seqlens``.

The log-sum-exp is kept in base 2 (``lse2 = m + log2(l)`` of the scores times scale*log2(e)),
stored in the accumulator dtype ([B, H, maxq]; fp32, or fp64 for gradcheck).

Grids: axis 0 enumerates the query (or key) blocks of every batch*head in turn (``_fold``), so
any batch x heads launches; axis 2 is the KV split. Autotune configs come from ``GPU_CONFIGS``,
pruned by dot mode, head dim and architecture.

Kernels:
* ``_fwd_kernel``: one program per (query block, batch*head, kv split). With one split it writes
  O and LSE; with several it writes a normalised partial O and partial LSE per split, merged by
  ``_fwd_combine_kernel`` in a fixed order (deterministic).
* ``_bwd_preprocess_kernel``: Delta = rowsum(O * dO).
* ``_bwd_dkdv_kernel``: dK, dV by key block; optionally atomically adds dQ into an fp32 buffer.
* ``_bwd_dq_kernel``: dQ by query block, optionally split over keys into fp32 partials.
* ``_dq_reduce_kernel``: sums dQ partials in a fixed order and writes dQ in q's layout/dtype.
"""
from __future__ import annotations

import triton
import triton.language as tl

from ..utils import runtime
from ..utils.runtime import autotune_configs


def _cfgs(entries):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in entries]


# (BLOCK_M, BLOCK_N, num_warps, num_stages) the GPU autotuner may pick, by kernel, dot mode and
# head-dim bucket (BLOCK_D <= 64, 128, 256). Chosen with the compile check
# (`python tools/aot_compile.py`, docs/perf/aot-sm90.md): on sm_80 and sm_90 none spills,
# none needs more than 240 of the 255 registers and none uses more than 95% of the shared memory.
# Modes: "16bit" (fp16/bf16 tensor-core dots), "tf32" (fp32 on tensor cores), "ieee" (fp32 or
# fp64 on the FMA units: small tiles, since the operands live in registers).
GPU_CONFIGS = {
    "fwd": {
        ("16bit", 64): [(64, 64, 4, 3), (64, 128, 8, 3), (128, 64, 8, 3), (128, 128, 8, 2), (32, 64, 4, 3),
                        (16, 64, 4, 3), (16, 128, 4, 3)],
        ("16bit", 128): [(64, 64, 4, 3), (128, 64, 8, 3), (128, 64, 8, 2), (64, 64, 8, 2), (32, 64, 4, 3),
                         (16, 64, 4, 3)],
        ("16bit", 256): [(64, 32, 4, 2), (32, 32, 4, 2), (16, 32, 4, 2)],
        ("tf32", 64): [(64, 64, 4, 2), (64, 64, 8, 2), (32, 64, 4, 2), (16, 64, 4, 2)],
        ("tf32", 128): [(64, 32, 4, 2), (32, 64, 4, 2), (32, 32, 4, 2), (16, 32, 4, 2)],
        ("tf32", 256): [(32, 32, 4, 1), (16, 32, 4, 1)],
        ("ieee", 64): [(32, 16, 4, 1), (16, 32, 4, 1)],
        ("ieee", 128): [(16, 32, 4, 1), (16, 16, 4, 1)],
        ("ieee", 256): [(16, 16, 4, 1)],
    },
    "dkdv": {
        ("16bit", 64): [(32, 64, 4, 2), (64, 64, 8, 2), (128, 64, 8, 2), (32, 128, 8, 2), (16, 64, 4, 2)],
        ("16bit", 128): [(32, 64, 8, 2), (32, 64, 8, 1), (16, 64, 8, 2), (32, 32, 4, 2)],
        ("16bit", 256): [(16, 32, 4, 1), (16, 32, 8, 1)],
        ("tf32", 64): [(32, 64, 8, 2), (16, 64, 8, 2), (16, 32, 4, 2)],
        ("tf32", 128): [(16, 32, 4, 2), (16, 64, 8, 2), (16, 32, 4, 1)],
        ("tf32", 256): [(16, 16, 4, 1)],
        ("ieee", 64): [(16, 32, 4, 1), (16, 16, 4, 1)],
        ("ieee", 128): [(16, 32, 8, 1), (16, 16, 4, 1)],
        ("ieee", 256): [(16, 16, 4, 1)],
    },
    "dq": {
        ("16bit", 64): [(32, 64, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2), (32, 128, 8, 2), (16, 64, 4, 2)],
        ("16bit", 128): [(32, 64, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2), (32, 128, 8, 2), (16, 64, 4, 2)],
        ("16bit", 256): [(32, 32, 4, 1), (16, 32, 4, 1)],
        ("tf32", 64): [(32, 64, 4, 2), (64, 64, 8, 2), (16, 64, 4, 2)],
        ("tf32", 128): [(32, 32, 4, 2), (32, 64, 8, 2), (16, 64, 4, 2), (16, 32, 4, 2)],
        ("tf32", 256): [(16, 16, 4, 1)],
        ("ieee", 64): [(16, 32, 4, 1), (16, 16, 4, 1)],
        ("ieee", 128): [(16, 32, 8, 1)],
        ("ieee", 256): [(16, 16, 4, 1)],
    },
}


# Ampere (sm_8x) has no wgmma: mma.sync keeps more of each tile in registers, so some tiles that
# fit Hopper spill there. These entries replace GPU_CONFIGS on devices below sm_90.
GPU_CONFIGS_SM80 = {
    "fwd": {
        ("16bit", 64): [(64, 64, 4, 3), (128, 64, 8, 3), (64, 64, 8, 2), (32, 64, 4, 3), (16, 64, 4, 3),
                        (16, 128, 4, 3)],
        ("16bit", 128): [(64, 64, 4, 3), (128, 64, 8, 2), (32, 64, 4, 3), (16, 64, 4, 3)],
    },
    "dkdv": {
        ("16bit", 64): [(32, 64, 8, 1), (16, 32, 4, 2)],
        ("tf32", 64): [(16, 32, 4, 1), (16, 32, 8, 1)],
        ("tf32", 128): [(16, 64, 8, 2), (16, 32, 4, 1)],
        ("ieee", 64): [(16, 16, 4, 1)],
        ("ieee", 128): [(16, 16, 4, 1)],
    },
    "dq": {
        ("16bit", 64): [(32, 64, 4, 2), (64, 64, 8, 2), (32, 128, 8, 2), (16, 64, 4, 2), (64, 32, 8, 2)],
        ("16bit", 128): [(32, 64, 4, 2), (64, 64, 8, 2), (32, 128, 8, 2), (16, 64, 4, 2), (128, 32, 8, 2)],
        ("tf32", 64): [(32, 64, 4, 2), (16, 64, 4, 2)],
    },
}


def dot_mode(upcast: bool, prec: str) -> str:
    """Config-table mode of a launch: "16bit", "tf32" or "ieee"."""
    if not upcast:
        return "16bit"
    return "tf32" if prec == "tf32" else "ieee"


def gpu_configs(kind: str, mode: str, block_d: int, arch: int = 90) -> list[tuple[int, int, int, int]]:
    """The configs the GPU autotuner may pick for ``kind`` ("fwd", "dkdv", "dq") on sm_``arch``."""
    bucket = 64 if block_d <= 64 else 128 if block_d <= 128 else 256
    if arch < 90 and (mode, bucket) in GPU_CONFIGS_SM80[kind]:
        return GPU_CONFIGS_SM80[kind][(mode, bucket)]
    return GPU_CONFIGS[kind][(mode, bucket)]


def _all_configs(*kinds):
    seen = []
    for kind in kinds:
        for table in (GPU_CONFIGS, GPU_CONFIGS_SM80):
            for entries in table[kind].values():
                seen += [e for e in entries if e not in seen]
    return _cfgs(seen)


def _pruner(kind: str):
    def prune(configs, named_args, **kwargs):
        if len(configs) == 1:  # the interpreter's single config
            return configs
        mode = dot_mode(kwargs["UPCAST"], kwargs["PREC"])
        arch = runtime.capability(named_args["Q"].device)
        keep = set(gpu_configs(kind, mode, kwargs["BLOCK_D"], arch))
        return [c for c in configs
                if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) in keep]
    return {"early_config_prune": prune}


_INTERP_CFG = triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=1)
_FWD_CONFIGS = autotune_configs(_all_configs("fwd"), _INTERP_CFG)
_BWD_CONFIGS = autotune_configs(_all_configs("dkdv", "dq"), _INTERP_CFG)
_KEY = ["Q_BUCKET", "K_BUCKET", "BLOCK_D", "PREC"]


@triton.jit
def _fold(pid, max_len, BLOCK: tl.constexpr):
    """(block index, batch*head index) of a program on the folded grid axis 0.

    Axis 0 enumerates cdiv(max_len, BLOCK) blocks for each batch*head in turn, so B*H is not
    bounded by the 65,535 limit of grid axes 1 and 2.
    """
    nb = tl.cdiv(max_len, BLOCK)
    return pid % nb, pid // nb


@triton.jit
def _bounds(b, cu_ptr, len_ptr, max_len, VARLEN: tl.constexpr, HAS_LEN: tl.constexpr):
    """(start, length) of sequence b: packed (cu_seqlens), padded (lengths) or dense."""
    if VARLEN:
        start = tl.load(cu_ptr + b).to(tl.int64)
        n = (tl.load(cu_ptr + b + 1).to(tl.int64) - start).to(tl.int32)
    else:
        start = (b * 0).to(tl.int64)
        if HAS_LEN:
            n = tl.minimum(tl.load(len_ptr + b).to(tl.int32), max_len)
        else:
            n = b * 0 + max_len
    return start, n


@triton.autotune(configs=_FWD_CONFIGS, key=_KEY + ["NSPLIT"], prune_configs_by=_pruner("fwd"))
@triton.jit(do_not_specialize=["MAXQ", "MAXK", "chunk"])
def _fwd_kernel(Q, K, V, O, LSE, OP, LSEP, CU_Q, CU_K, KLEN,
                sqb, sqm, sqh, skb, skn, skh, svb, svn, svh, sob, som, soh,
                B, H, MAXQ, MAXK, D, chunk, qk_scale,
                Q_BUCKET, K_BUCKET,
                NSPLIT: tl.constexpr, VARLEN_Q: tl.constexpr, VARLEN_K: tl.constexpr,
                HAS_KLEN: tl.constexpr, STORE_LSE: tl.constexpr, UPCAST: tl.constexpr,
                ACC: tl.constexpr, PREC: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m, bh = _fold(tl.program_id(0), MAXQ, BLOCK_M)
    split = tl.program_id(2)
    b = bh // H
    h = bh % H
    q_start, q_len = _bounds(b, CU_Q, CU_Q, MAXQ, VARLEN_Q, False)
    k_start, k_len = _bounds(b, CU_K, KLEN, MAXK, VARLEN_K, HAS_KLEN)
    if pid_m * BLOCK_M < q_len:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < q_len
        d_mask = offs_d < D
        b64 = b.to(tl.int64)
        h64 = h.to(tl.int64)
        q_ptrs = (Q + b64 * sqb + h64 * sqh + (q_start + offs_m)[:, None].to(tl.int64) * sqm
                  + offs_d[None, :])
        q = tl.load(q_ptrs, mask=m_mask[:, None] & d_mask[None, :], other=0.0)
        if UPCAST:
            q = q.to(ACC)
        k_base = K + b64 * skb + h64 * skh + k_start * skn
        v_base = V + b64 * svb + h64 * svh + k_start * svn
        if NSPLIT > 1:
            lo = split * chunk
            hi = tl.minimum(lo + chunk, k_len)
        else:
            lo = split * 0
            hi = k_len
        m_i = tl.full([BLOCK_M], float("-inf"), ACC)
        l_i = tl.zeros([BLOCK_M], ACC)
        acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
        for start_n in range(lo, hi, BLOCK_N):
            cols = start_n + offs_n
            n_mask = cols < hi
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_base + cols[:, None].to(tl.int64) * skn + offs_d[None, :], mask=kv_mask, other=0.0)
            if UPCAST:
                k = k.to(ACC)
            s = tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC) * qk_scale
            s = tl.where(n_mask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_base + cols[:, None].to(tl.int64) * svn + offs_d[None, :], mask=kv_mask, other=0.0)
            if UPCAST:
                v = v.to(ACC)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC).to(ACC)
            m_i = m_new
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        lse = tl.where(l_i > 0, m_i + tl.log2(l_safe), float("-inf"))
        o_mask = m_mask[:, None] & d_mask[None, :]
        if NSPLIT > 1:
            row = ((split * B + b).to(tl.int64) * H + h64) * MAXQ + offs_m
            tl.store(OP + row[:, None] * D + offs_d[None, :], out, mask=o_mask)
            tl.store(LSEP + row, lse, mask=m_mask)
        else:
            o_ptrs = (O + b64 * sob + h64 * soh + (q_start + offs_m)[:, None].to(tl.int64) * som
                      + offs_d[None, :])
            tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=o_mask)
            if STORE_LSE:
                tl.store(LSE + (b64 * H + h64) * MAXQ + offs_m, lse, mask=m_mask)


@triton.jit(do_not_specialize=["MAXQ"])
def _fwd_combine_kernel(OP, LSEP, O, LSE, CU_Q, sob, som, soh, B, H, MAXQ, D,
                        NSPLIT: tl.constexpr, VARLEN_Q: tl.constexpr, STORE_LSE: tl.constexpr,
                        ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """O = sum_c 2^(lse_c - lse) O_c with lse = log2 sum_c 2^lse_c, in split order."""
    pid_m, bh = _fold(tl.program_id(0), MAXQ, BLOCK_M)
    b = bh // H
    h = bh % H
    q_start, q_len = _bounds(b, CU_Q, CU_Q, MAXQ, VARLEN_Q, False)
    if pid_m * BLOCK_M < q_len:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < q_len
        o_mask = m_mask[:, None] & (offs_d < D)[None, :]
        b64 = b.to(tl.int64)
        h64 = h.to(tl.int64)
        row0 = (b64 * H + h64) * MAXQ + offs_m
        m_all = tl.full([BLOCK_M], float("-inf"), ACC)
        for c in range(NSPLIT):
            rows = ((c * B + b).to(tl.int64) * H + h64) * MAXQ + offs_m
            lse_c = tl.load(LSEP + rows, mask=m_mask, other=float("-inf")).to(ACC)
            m_all = tl.maximum(m_all, lse_c)
        m_safe = tl.where(m_all == float("-inf"), 0.0, m_all)
        l_all = tl.zeros([BLOCK_M], ACC)
        acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
        for c in range(NSPLIT):
            rows = ((c * B + b).to(tl.int64) * H + h64) * MAXQ + offs_m
            lse_c = tl.load(LSEP + rows, mask=m_mask, other=float("-inf")).to(ACC)
            w = tl.exp2(lse_c - m_safe)
            o_c = tl.load(OP + rows[:, None] * D + offs_d[None, :], mask=o_mask, other=0.0).to(ACC)
            l_all += w
            acc += w[:, None] * o_c
        l_safe = tl.where(l_all > 0, l_all, 1.0)
        out = acc / l_safe[:, None]
        o_ptrs = (O + b64 * sob + h64 * soh + (q_start + offs_m)[:, None].to(tl.int64) * som
                  + offs_d[None, :])
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=o_mask)
        if STORE_LSE:
            lse = tl.where(l_all > 0, m_safe + tl.log2(l_safe), float("-inf"))
            tl.store(LSE + row0, lse, mask=m_mask)


@triton.jit(do_not_specialize=["MAXQ"])
def _bwd_preprocess_kernel(O, DO, DELTA, CU_Q, sob, som, soh, H, MAXQ, D,
                           VARLEN_Q: tl.constexpr, ACC: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """DELTA[b, h, i] = sum_d O[b, i, h, d] * dO[b, i, h, d] (dO shares O's strides)."""
    pid_m, bh = _fold(tl.program_id(0), MAXQ, BLOCK_M)
    b = bh // H
    h = bh % H
    q_start, q_len = _bounds(b, CU_Q, CU_Q, MAXQ, VARLEN_Q, False)
    if pid_m * BLOCK_M < q_len:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < q_len
        mask = m_mask[:, None] & (offs_d < D)[None, :]
        off = (b.to(tl.int64) * sob + h.to(tl.int64) * soh
               + (q_start + offs_m)[:, None].to(tl.int64) * som + offs_d[None, :])
        o = tl.load(O + off, mask=mask, other=0.0).to(ACC)
        do = tl.load(DO + off, mask=mask, other=0.0).to(ACC)
        tl.store(DELTA + (b.to(tl.int64) * H + h) * MAXQ + offs_m, tl.sum(o * do, 1), mask=m_mask)


@triton.autotune(configs=_BWD_CONFIGS, key=_KEY + ["ATOMIC_DQ"], reset_to_zero=["DQ_ACC"],
                 prune_configs_by=_pruner("dkdv"))
@triton.jit(do_not_specialize=["MAXQ", "MAXK"])
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC, CU_Q, CU_K, KLEN,
                     sqb, sqm, sqh, skb, skn, skh, svb, svn, svh, sob, som, soh,
                     sdkb, sdkn, sdkh, sdvb, sdvn, sdvh,
                     H, MAXQ, MAXK, D, qk_scale, sm_scale,
                     Q_BUCKET, K_BUCKET,
                     VARLEN_Q: tl.constexpr, VARLEN_K: tl.constexpr, HAS_KLEN: tl.constexpr,
                     ATOMIC_DQ: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
                     PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dV = P^T dO, dK = scale * dS^T Q over all queries of one key block.

    DO shares O's strides (sob, som, soh). With ATOMIC_DQ, dQ += scale * dS K is added into the
    fp32 buffer DQ_ACC laid out [B, H, MAXQ, D].
    """
    pid_n, bh = _fold(tl.program_id(0), MAXK, BLOCK_N)
    b = bh // H
    h = bh % H
    q_start, q_len = _bounds(b, CU_Q, CU_Q, MAXQ, VARLEN_Q, False)
    k_start, k_len = _bounds(b, CU_K, KLEN, MAXK, VARLEN_K, HAS_KLEN)
    # Padded key rows (dense layout, positions >= k_len) get zero gradients.
    if VARLEN_K:
        rows_out = k_len
    else:
        rows_out = b * 0 + MAXK
    if pid_n * BLOCK_N < rows_out:
        offs_m = tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        n_mask = offs_n < k_len
        d_mask = offs_d < D
        kv_mask = n_mask[:, None] & d_mask[None, :]
        b64 = b.to(tl.int64)
        h64 = h.to(tl.int64)
        rows_k = (k_start + offs_n)[:, None].to(tl.int64)
        k = tl.load(K + b64 * skb + h64 * skh + rows_k * skn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + b64 * svb + h64 * svh + rows_k * svn + offs_d[None, :], mask=kv_mask, other=0.0)
        if UPCAST:
            k = k.to(ACC)
            v = v.to(ACC)
        dk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
        dv = tl.zeros([BLOCK_N, BLOCK_D], ACC)
        q_base = Q + b64 * sqb + h64 * sqh
        do_base = DO + b64 * sob + h64 * soh
        stat_base = (b64 * H + h64) * MAXQ
        q_hi = tl.where(pid_n * BLOCK_N < k_len, q_len, 0)
        for start_m in range(0, q_hi, BLOCK_M):
            rows = start_m + offs_m
            m_mask = rows < q_len
            qd_mask = m_mask[:, None] & d_mask[None, :]
            rq = (q_start + rows)[:, None].to(tl.int64)
            q = tl.load(q_base + rq * sqm + offs_d[None, :], mask=qd_mask, other=0.0)
            do = tl.load(do_base + rq * som + offs_d[None, :], mask=qd_mask, other=0.0)
            if UPCAST:
                q = q.to(ACC)
                do = do.to(ACC)
            lse = tl.load(LSE + stat_base + rows, mask=m_mask, other=0.0).to(ACC)
            delta = tl.load(DELTA + stat_base + rows, mask=m_mask, other=0.0).to(ACC)
            s = tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC) * qk_scale
            p = tl.exp2(s - lse[:, None])
            p = tl.where(m_mask[:, None] & n_mask[None, :], p, 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC).to(ACC)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC).to(ACC)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC).to(ACC)
            if ATOMIC_DQ:
                dq = tl.dot(ds.to(k.dtype), k, input_precision=PREC).to(tl.float32) * sm_scale
                tl.atomic_add(DQ_ACC + (stat_base + rows)[:, None] * D + offs_d[None, :], dq, mask=qd_mask)
        dk = dk * sm_scale
        kv_mask = (offs_n < rows_out)[:, None] & d_mask[None, :]
        rows_o = (k_start + offs_n)[:, None].to(tl.int64)
        tl.store(DK + b64 * sdkb + h64 * sdkh + rows_o * sdkn + offs_d[None, :],
                 dk.to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + b64 * sdvb + h64 * sdvh + rows_o * sdvn + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.autotune(configs=_BWD_CONFIGS, key=_KEY + ["NSPLIT"], prune_configs_by=_pruner("dq"))
@triton.jit(do_not_specialize=["MAXQ", "MAXK", "chunk"])
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, DQP, CU_Q, CU_K, KLEN,
                   sqb, sqm, sqh, skb, skn, skh, svb, svn, svh, sob, som, soh,
                   sdqb, sdqm, sdqh,
                   B, H, MAXQ, MAXK, D, chunk, qk_scale, sm_scale,
                   Q_BUCKET, K_BUCKET,
                   NSPLIT: tl.constexpr, VARLEN_Q: tl.constexpr, VARLEN_K: tl.constexpr,
                   HAS_KLEN: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
                   PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """dQ = scale * sum_n dS K for one query block over the keys of split program_id(2).

    With NSPLIT == 1 it writes dQ (q's layout and dtype); otherwise an fp32 partial into DQP,
    laid out [NSPLIT, B, H, MAXQ, D], for ``_dq_reduce_kernel``.
    """
    pid_m, bh = _fold(tl.program_id(0), MAXQ, BLOCK_M)
    split = tl.program_id(2)
    b = bh // H
    h = bh % H
    q_start, q_len = _bounds(b, CU_Q, CU_Q, MAXQ, VARLEN_Q, False)
    k_start, k_len = _bounds(b, CU_K, KLEN, MAXK, VARLEN_K, HAS_KLEN)
    if pid_m * BLOCK_M < q_len:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < q_len
        d_mask = offs_d < D
        qd_mask = m_mask[:, None] & d_mask[None, :]
        b64 = b.to(tl.int64)
        h64 = h.to(tl.int64)
        rq = (q_start + offs_m)[:, None].to(tl.int64)
        q = tl.load(Q + b64 * sqb + h64 * sqh + rq * sqm + offs_d[None, :], mask=qd_mask, other=0.0)
        do = tl.load(DO + b64 * sob + h64 * soh + rq * som + offs_d[None, :], mask=qd_mask, other=0.0)
        if UPCAST:
            q = q.to(ACC)
            do = do.to(ACC)
        stat = (b64 * H + h64) * MAXQ + offs_m
        lse = tl.load(LSE + stat, mask=m_mask, other=0.0).to(ACC)
        delta = tl.load(DELTA + stat, mask=m_mask, other=0.0).to(ACC)
        if NSPLIT > 1:
            lo = split * chunk
            hi = tl.minimum(lo + chunk, k_len)
        else:
            lo = split * 0
            hi = k_len
        k_base = K + b64 * skb + h64 * skh + k_start * skn
        v_base = V + b64 * svb + h64 * svh + k_start * svn
        dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
        for start_n in range(lo, hi, BLOCK_N):
            cols = start_n + offs_n
            n_mask = cols < hi
            kv_mask = n_mask[:, None] & d_mask[None, :]
            k = tl.load(k_base + cols[:, None].to(tl.int64) * skn + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + cols[:, None].to(tl.int64) * svn + offs_d[None, :], mask=kv_mask, other=0.0)
            if UPCAST:
                k = k.to(ACC)
                v = v.to(ACC)
            s = tl.dot(q, tl.trans(k), input_precision=PREC).to(ACC) * qk_scale
            p = tl.exp2(s - lse[:, None])
            p = tl.where(m_mask[:, None] & n_mask[None, :], p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC).to(ACC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC).to(ACC)
        dq = dq * sm_scale
        if NSPLIT > 1:
            row = ((split * B + b).to(tl.int64) * H + h64) * MAXQ + offs_m
            tl.store(DQP + row[:, None] * D + offs_d[None, :], dq, mask=qd_mask)
        else:
            tl.store(DQ + b64 * sdqb + h64 * sdqh + rq * sdqm + offs_d[None, :],
                     dq.to(DQ.dtype.element_ty), mask=qd_mask)


@triton.jit(do_not_specialize=["MAXQ"])
def _dq_reduce_kernel(DQP, DQ, CU_Q, sdqb, sdqm, sdqh, B, H, MAXQ, D,
                      NSPLIT: tl.constexpr, VARLEN_Q: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """DQ = sum over splits of DQP[c] ([NSPLIT, B, H, MAXQ, D]), summed in split order."""
    pid_m, bh = _fold(tl.program_id(0), MAXQ, BLOCK_M)
    b = bh // H
    h = bh % H
    q_start, q_len = _bounds(b, CU_Q, CU_Q, MAXQ, VARLEN_Q, False)
    if pid_m * BLOCK_M < q_len:
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_m < q_len)[:, None] & (offs_d < D)[None, :]
        b64 = b.to(tl.int64)
        h64 = h.to(tl.int64)
        acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
        for c in range(NSPLIT):
            rows = ((c * B + b).to(tl.int64) * H + h64) * MAXQ + offs_m
            acc += tl.load(DQP + rows[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(ACC)
        rq = (q_start + offs_m)[:, None].to(tl.int64)
        tl.store(DQ + b64 * sdqb + h64 * sdqh + rq * sdqm + offs_d[None, :],
                 acc.to(DQ.dtype.element_ty), mask=mask)
