"""Host launchers, torch custom ops (``lcirc::xattn_fwd`` / ``lcirc::xattn_bwd``, with fake
implementations and registered autograd) and the functional API of the Triton cross-attention.

The forward is always deterministic (split-KV partials are merged in a fixed order). The backward
is deterministic with ``deterministic=True``; otherwise, for few queries (split mode), dQ is
accumulated with fp32 atomics inside the dK/dV pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ..utils.runtime import check_device, count_launch, interpreting, next_pow2, num_sms, resolve_tf32
from . import kernels as K

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 256
SPLIT_MAX_QUERIES = 256  # split-KV (forward) and split dQ (backward) only for up to this many queries
_MAX_SPLITS = 64
_GRID_X_MAX = 2 ** 31 - 1


@dataclass(frozen=True)
class _Seq:
    """Per-call sequence description shared by forward and backward."""
    batch: int
    heads: int
    dim: int
    maxq: int
    maxk: int
    cu_q: torch.Tensor | None
    cu_k: torch.Tensor | None
    klen: torch.Tensor | None
    tf32: bool = True


def not_supported_reasons(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list[str]:
    """Why the Triton kernels cannot take these inputs (empty list: supported)."""
    reasons = []
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in SUPPORTED_DTYPES:
            reasons.append(f"{name} dtype {t.dtype} is not one of {SUPPORTED_DTYPES}")
    if not (q.dtype == k.dtype == v.dtype):
        reasons.append(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    d = q.shape[-1]
    if d > MAX_HEAD_DIM:
        reasons.append(f"head_dim {d} > {MAX_HEAD_DIM} is not supported by the Triton kernels")
    if k.shape[-1] != d or v.shape[-1] != d:
        reasons.append(f"head dims differ: q {d}, k {k.shape[-1]}, v {v.shape[-1]}")
    if not (q.device == k.device == v.device):
        reasons.append("q, k, v are on different devices")
    elif q.device.type != "cuda" and not interpreting():
        reasons.append(f"device {q.device} needs TRITON_INTERPRET=1")
    return reasons


def _strides(t: torch.Tensor, packed: bool) -> tuple[int, int, int]:
    """(batch, row, head) strides; a packed [T, H, D] tensor has batch stride 0."""
    return (0, t.stride(0), t.stride(1)) if packed else (t.stride(0), t.stride(1), t.stride(2))


def _dtype_flags(dtype: torch.dtype, tf32: bool):
    upcast = interpreting() or dtype in (torch.float32, torch.float64)
    acc = tl.float64 if dtype == torch.float64 else tl.float32
    if dtype == torch.float32:
        prec = "tf32" if tf32 else "ieee"
    else:
        prec = "ieee" if upcast else "tf32"  # fp64 dots; 16-bit dots ignore the precision
    return upcast, acc, prec


def _num_splits(seq: _Seq, device: torch.device, requested: int | None) -> tuple[int, int]:
    """(splits, chunk) over the keys: >1 only for few queries and many keys."""
    if requested is not None:
        n = max(1, min(int(requested), _MAX_SPLITS, seq.maxk))
        chunk = -(-seq.maxk // n)
        chunk = -(-chunk // 16) * 16
    else:
        if seq.maxq > SPLIT_MAX_QUERIES:
            return 1, seq.maxk
        gran, min_chunk = (64, 64) if interpreting() else (128, 256)
        programs = seq.batch * seq.heads * -(-seq.maxq // 64)
        want = -(-2 * num_sms(device) // programs)
        n = max(1, min(want, -(-seq.maxk // min_chunk), _MAX_SPLITS))
        chunk = -(-(-(-seq.maxk // n)) // gran) * gran
    n = max(1, -(-seq.maxk // max(chunk, 1)))
    return n, max(chunk, 1)


def _common(seq: _Seq, dtype: torch.dtype):
    upcast, acc, prec = _dtype_flags(dtype, seq.tf32)
    return dict(Q_BUCKET=next_pow2(seq.maxq), K_BUCKET=next_pow2(seq.maxk),
                VARLEN_Q=seq.cu_q is not None, UPCAST=upcast, ACC=acc, PREC=prec,
                BLOCK_D=max(16, next_pow2(seq.dim)))


def _grid(seq: _Seq, length: int, block: int, nsplit: int = 1) -> tuple[int, int, int]:
    """Launch grid: blocks of every batch*head folded into axis 0 (see ``kernels._fold``)."""
    x = triton.cdiv(length, block) * seq.batch * seq.heads
    if x > _GRID_X_MAX:
        raise ValueError(f"{seq.batch} x {seq.heads} (batch x heads) x {triton.cdiv(length, block)} blocks "
                         f"exceeds the grid limit {_GRID_X_MAX}")
    return (x, 1, nsplit)


def _dummy(device) -> torch.Tensor:
    return torch.zeros(1, dtype=torch.int32, device=device)


def attention_forward(q, k, v, seq: _Seq, scale: float, store_lse: bool,
                      num_splits: int | None = None):
    """Launch the forward. Returns (o like q, lse [B, H, maxq] in the accumulator dtype or None)."""
    dev = q.device
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    o = torch.empty(q.shape, dtype=q.dtype, device=dev)
    lse = torch.empty((seq.batch, seq.heads, seq.maxq), dtype=acc_dtype, device=dev) if store_lse else None
    nsplit, chunk = _num_splits(seq, dev, num_splits)
    packed_q, packed_k = seq.cu_q is not None, seq.cu_k is not None
    dummy = _dummy(dev)
    common = _common(seq, q.dtype)
    if nsplit > 1:
        op = torch.empty((nsplit, seq.batch, seq.heads, seq.maxq, seq.dim), dtype=acc_dtype, device=dev)
        lsep = torch.empty((nsplit, seq.batch, seq.heads, seq.maxq), dtype=acc_dtype, device=dev)
    else:
        op = lsep = dummy
    grid = lambda meta: _grid(seq, seq.maxq, meta["BLOCK_M"], nsplit)  # noqa: E731
    count_launch("attn_fwd")
    K._fwd_kernel[grid](
        q, k, v, o, lse if lse is not None else dummy, op, lsep,
        seq.cu_q if packed_q else dummy, seq.cu_k if packed_k else dummy,
        seq.klen if seq.klen is not None else dummy,
        *_strides(q, packed_q), *_strides(k, packed_k), *_strides(v, packed_k), *_strides(o, packed_q),
        seq.batch, seq.heads, seq.maxq, seq.maxk, seq.dim, chunk, scale * math.log2(math.e),
        NSPLIT=nsplit, VARLEN_K=packed_k, HAS_KLEN=seq.klen is not None, STORE_LSE=store_lse,
        **common)
    if nsplit > 1:
        count_launch("attn_fwd_combine")
        bm = 32
        K._fwd_combine_kernel[_grid(seq, seq.maxq, bm)](
            op, lsep, o, lse if lse is not None else dummy, seq.cu_q if packed_q else dummy,
            *_strides(o, packed_q), seq.batch, seq.heads, seq.maxq, seq.dim,
            NSPLIT=nsplit, VARLEN_Q=packed_q, STORE_LSE=store_lse, ACC=common["ACC"],
            BLOCK_M=bm, BLOCK_D=common["BLOCK_D"])
    return o, lse


def attention_backward(do, q, k, v, o, lse, seq: _Seq, scale: float, need_dq: bool,
                       need_dkdv: bool, deterministic: bool):
    """Launch only the passes asked for. Returns (dq or None, dk or None, dv or None)."""
    dev = q.device
    packed_q, packed_k = seq.cu_q is not None, seq.cu_k is not None
    dummy = _dummy(dev)
    common = _common(seq, q.dtype)
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    do = do.contiguous()
    if do.stride() != o.stride():
        raise RuntimeError("grad_output and output layouts differ")
    qk_scale, sm_scale = scale * math.log2(math.e), scale
    seqargs = (seq.cu_q if packed_q else dummy, seq.cu_k if packed_k else dummy,
               seq.klen if seq.klen is not None else dummy)
    in_strides = (*_strides(q, packed_q), *_strides(k, packed_k), *_strides(v, packed_k),
                  *_strides(o, packed_q))
    kv_flags = dict(VARLEN_K=packed_k, HAS_KLEN=seq.klen is not None)

    delta = torch.empty((seq.batch, seq.heads, seq.maxq), dtype=acc_dtype, device=dev)
    bm = 32
    count_launch("attn_bwd_preprocess")
    K._bwd_preprocess_kernel[_grid(seq, seq.maxq, bm)](
        o, do, delta, seqargs[0], *_strides(o, packed_q), seq.heads, seq.maxq, seq.dim,
        VARLEN_Q=packed_q, ACC=common["ACC"], BLOCK_M=bm, BLOCK_D=common["BLOCK_D"])

    small_q = seq.maxq <= SPLIT_MAX_QUERIES
    nsplit, chunk = _num_splits(seq, dev, None) if small_q else (1, seq.maxk)
    atomic_dq = need_dq and need_dkdv and not deterministic and small_q and acc_dtype == torch.float32
    dq = torch.empty(q.shape, dtype=q.dtype, device=dev) if need_dq else None
    dk = dv = None
    if need_dkdv:
        dk = torch.empty(k.shape, dtype=k.dtype, device=dev)
        dv = torch.empty(v.shape, dtype=v.dtype, device=dev)
        dq_acc = (torch.zeros((seq.batch, seq.heads, seq.maxq, seq.dim), dtype=torch.float32, device=dev)
                  if atomic_dq else torch.zeros(1, dtype=torch.float32, device=dev))
        grid = lambda meta: _grid(seq, seq.maxk, meta["BLOCK_N"])  # noqa: E731
        count_launch("attn_bwd_dkdv")
        K._bwd_dkdv_kernel[grid](
            q, k, v, do, lse, delta, dk, dv, dq_acc, *seqargs, *in_strides,
            *_strides(dk, packed_k), *_strides(dv, packed_k),
            seq.heads, seq.maxq, seq.maxk, seq.dim, qk_scale, sm_scale,
            ATOMIC_DQ=atomic_dq, **kv_flags, **common)
        if atomic_dq:
            _reduce_dq(dq_acc.unsqueeze(0), dq, seq, packed_q, common, dummy)
    if need_dq and not atomic_dq:
        dqp = (torch.empty((nsplit, seq.batch, seq.heads, seq.maxq, seq.dim), dtype=acc_dtype, device=dev)
               if nsplit > 1 else dummy)
        grid = lambda meta: _grid(seq, seq.maxq, meta["BLOCK_M"], nsplit)  # noqa: E731
        count_launch("attn_bwd_dq")
        K._bwd_dq_kernel[grid](
            q, k, v, do, lse, delta, dq, dqp, *seqargs, *in_strides, *_strides(dq, packed_q),
            seq.batch, seq.heads, seq.maxq, seq.maxk, seq.dim, chunk, qk_scale, sm_scale,
            NSPLIT=nsplit, **kv_flags, **common)
        if nsplit > 1:
            _reduce_dq(dqp, dq, seq, packed_q, common, dummy)
    return dq, dk, dv


def _reduce_dq(partials, dq, seq: _Seq, packed_q: bool, common: dict, dummy) -> None:
    bm = 32
    count_launch("attn_dq_reduce")
    K._dq_reduce_kernel[_grid(seq, seq.maxq, bm)](
        partials, dq, seq.cu_q if packed_q else dummy, *_strides(dq, packed_q),
        seq.batch, seq.heads, seq.maxq, seq.dim,
        NSPLIT=partials.shape[0], VARLEN_Q=packed_q, ACC=common["ACC"],
        BLOCK_M=bm, BLOCK_D=common["BLOCK_D"])


# ---- torch custom ops: the launchers above as opaque ops with fake shapes and autograd --------

def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _make_seq(q, kv_lengths, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, allow_tf32) -> _Seq:
    batch = q.shape[0] if cu_seqlens_k is None else cu_seqlens_k.shape[0] - 1
    return _Seq(batch, q.shape[-2], q.shape[-1], max_seqlen_q, max_seqlen_k, cu_seqlens_q, cu_seqlens_k,
                kv_lengths, allow_tf32)


@torch.library.custom_op("lcirc::xattn_fwd", mutates_args=())
def xattn_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lengths: Optional[torch.Tensor],
              cu_seqlens_q: Optional[torch.Tensor], cu_seqlens_k: Optional[torch.Tensor],
              max_seqlen_q: int, max_seqlen_k: int, softmax_scale: float, deterministic: bool,
              store_lse: bool, num_splits: int, allow_tf32: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton forward. q [B, Lq, H, D] or packed [Tq, H, D]; k, v [B, Lk, H, D] or packed [Tk, H, D].

    Returns o (q's shape, contiguous, q's dtype) and the base-2 LSE [B, H, max_seqlen_q] in fp32
    (fp64 for fp64 inputs), or an empty LSE when ``store_lse`` is False. ``num_splits`` 0: automatic.
    ``deterministic`` is used by the backward only.
    """
    seq = _make_seq(q, kv_lengths, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, allow_tf32)
    o, lse = attention_forward(q, k, v, seq, softmax_scale, store_lse, num_splits or None)
    return o, (lse if lse is not None else q.new_zeros(0, dtype=_acc_dtype(q.dtype)))


@xattn_fwd.register_fake
def _(q, k, v, kv_lengths, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale,
      deterministic, store_lse, num_splits, allow_tf32):
    batch = q.shape[0] if cu_seqlens_k is None else cu_seqlens_k.shape[0] - 1
    lse_shape = (batch, q.shape[-2], max_seqlen_q) if store_lse else (0,)
    return q.new_empty(q.shape), q.new_empty(lse_shape, dtype=_acc_dtype(q.dtype))


@torch.library.custom_op("lcirc::xattn_bwd", mutates_args=())
def xattn_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
              lse: torch.Tensor, kv_lengths: Optional[torch.Tensor], cu_seqlens_q: Optional[torch.Tensor],
              cu_seqlens_k: Optional[torch.Tensor], max_seqlen_q: int, max_seqlen_k: int,
              softmax_scale: float, need_dq: bool, need_dkdv: bool, deterministic: bool,
              allow_tf32: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward from the saved q, k, v, o, lse. Returns (dq, dk, dv); a gradient not asked
    for comes back as an empty tensor."""
    seq = _make_seq(q, kv_lengths, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, allow_tf32)
    dq, dk, dv = attention_backward(do, q, k, v, o, lse, seq, softmax_scale, need_dq, need_dkdv,
                                    deterministic)
    return (dq if dq is not None else q.new_zeros(0), dk if dk is not None else k.new_zeros(0),
            dv if dv is not None else v.new_zeros(0))


@xattn_bwd.register_fake
def _(do, q, k, v, o, lse, kv_lengths, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
      softmax_scale, need_dq, need_dkdv, deterministic, allow_tf32):
    return (q.new_empty(q.shape if need_dq else (0,)), k.new_empty(k.shape if need_dkdv else (0,)),
            v.new_empty(v.shape if need_dkdv else (0,)))


_INDEX_ARGS = (3, 4, 5)  # kv_lengths, cu_seqlens_q, cu_seqlens_k in xattn_fwd's inputs


def _xattn_setup_context(ctx, inputs, output):
    q, k, v = inputs[:3]
    index = [inputs[i] for i in _INDEX_ARGS]
    ctx.has_index = [t is not None for t in index]
    ctx.save_for_backward(q, k, v, *output, *[t for t in index if t is not None])
    (ctx.max_seqlen_q, ctx.max_seqlen_k, ctx.scale, ctx.deterministic, _, _,
     ctx.allow_tf32) = inputs[6:]


def _xattn_backward(ctx, do, _dlse):
    q, k, v, o, lse, *rest = ctx.saved_tensors
    rest = iter(rest)
    index = [next(rest) if has else None for has in ctx.has_index]
    need_dq, need_dk, need_dv = ctx.needs_input_grad[:3]
    dq, dk, dv = xattn_bwd(do.contiguous(), q, k, v, o, lse, *index, ctx.max_seqlen_q, ctx.max_seqlen_k,
                           ctx.scale, need_dq, need_dk or need_dv, ctx.deterministic, ctx.allow_tf32)
    return ((dq if need_dq else None), (dk if need_dk else None), (dv if need_dv else None)) + (None,) * 10


xattn_fwd.register_autograd(_xattn_backward, setup_context=_xattn_setup_context)


def _prep(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _check_inputs(q, k, v) -> None:
    reasons = not_supported_reasons(q, k, v)
    if reasons:
        raise NotImplementedError("triton cross_attention: " + "; ".join(reasons))
    check_device(q, k, v)


def _run(q, k, v, seq: _Seq, softmax_scale, deterministic, num_splits):
    scale = float(softmax_scale) if softmax_scale is not None else 1.0 / math.sqrt(seq.dim)
    store_lse = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if not store_lse and not torch.compiler.is_compiling():
        # no graph to record: launch directly (the custom op's dispatch costs ~15 us a call on CPU)
        return attention_forward(q, k, v, seq, scale, False, num_splits or None)[0]
    o, _ = xattn_fwd(q, k, v, seq.klen, seq.cu_q, seq.cu_k, seq.maxq, seq.maxk, scale,
                     bool(deterministic), store_lse, int(num_splits or 0), seq.tf32)
    return o


def _check_index(name: str, t: torch.Tensor, n: int, device) -> torch.Tensor:
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries, got shape {tuple(t.shape)}")
    if t.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device}, expected {device}")
    return t.contiguous()


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    kv_lengths: torch.Tensor | None = None, softmax_scale: float | None = None,
                    deterministic: bool = False, num_splits: int | None = None,
                    allow_tf32: bool | None = None) -> torch.Tensor:
    """Non-causal cross-attention with optional key padding.

    Args:
        q: [B, Lq, H, D]; k, v: [B, Lk, H, D]; fp16/bf16/fp32/fp64, D <= 256.
        kv_lengths: optional int [B]; keys at positions >= kv_lengths[b] are ignored
            (a row with no keys gives zeros).
        softmax_scale: defaults to 1/sqrt(D).
        deterministic: atomic-free backward (the forward is always deterministic).
        num_splits: force the number of KV splits of the forward (None: automatic).
        allow_tf32: fp32 inputs only: tensor-core TF32 products (True) or IEEE fp32 on the FMA
            units (False, slower, smaller tiles). None: TF32 unless ``TRITON_F32_DEFAULT=ieee``.
            The CPU interpreter computes both exactly.
    Returns:
        o: [B, Lq, H, D] in q's dtype.
    """
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be [B, L, H, D], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k and v shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    B, Lq, H, D = q.shape
    if k.shape[0] != B or k.shape[2] != H:
        raise ValueError(f"k shape {tuple(k.shape)} does not match q shape {tuple(q.shape)} in batch/heads")
    _check_inputs(q, k, v)
    if kv_lengths is not None:
        kv_lengths = _check_index("kv_lengths", kv_lengths, B, q.device)
    seq = _Seq(B, H, D, Lq, k.shape[1], None, None, kv_lengths, resolve_tf32(allow_tf32))
    if Lq == 0 or k.shape[1] == 0 or B == 0:
        raise ValueError(f"empty attention inputs: q {tuple(q.shape)}, k {tuple(k.shape)}")
    return _run(_prep(q), _prep(k), _prep(v), seq, softmax_scale, deterministic, num_splits)


def cross_attention_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           cu_seqlens_k: torch.Tensor, max_seqlen_k: int | None = None,
                           cu_seqlens_q: torch.Tensor | None = None, max_seqlen_q: int | None = None,
                           softmax_scale: float | None = None, deterministic: bool = False,
                           num_splits: int | None = None,
                           allow_tf32: bool | None = None) -> torch.Tensor:
    """Cross-attention over packed keys (and optionally packed queries).

    Args:
        q: [B, Lq, H, D] dense, or packed [Tq, H, D] with ``cu_seqlens_q`` (int [B+1]).
        k, v: packed [Tk, H, D]; sequence b owns rows cu_seqlens_k[b]:cu_seqlens_k[b+1].
        max_seqlen_k / max_seqlen_q: Python ints (computed with a host sync when None).
        allow_tf32: as in `cross_attention`.
    Returns:
        o shaped like q, in q's dtype.
    """
    if k.dim() != 3 or v.shape != k.shape:
        raise ValueError(f"packed k, v must both be [Tk, H, D], got {tuple(k.shape)}, {tuple(v.shape)}")
    B = cu_seqlens_k.shape[0] - 1
    if cu_seqlens_q is None:
        if q.dim() != 4 or q.shape[0] != B:
            raise ValueError(f"dense q must be [B={B}, Lq, H, D], got {tuple(q.shape)}")
        maxq = q.shape[1]
    else:
        if q.dim() != 3:
            raise ValueError(f"packed q must be [Tq, H, D], got {tuple(q.shape)}")
        cu_seqlens_q = _check_index("cu_seqlens_q", cu_seqlens_q, B + 1, q.device)
        maxq = int(max_seqlen_q) if max_seqlen_q is not None else int((cu_seqlens_q[1:] - cu_seqlens_q[:-1]).max())
    H, D = q.shape[-2], q.shape[-1]
    if k.shape[1] != H:
        raise ValueError(f"k has {k.shape[1]} heads, q has {H}")
    _check_inputs(q, k, v)
    cu_seqlens_k = _check_index("cu_seqlens_k", cu_seqlens_k, B + 1, q.device)
    maxk = int(max_seqlen_k) if max_seqlen_k is not None else int((cu_seqlens_k[1:] - cu_seqlens_k[:-1]).max())
    if B < 1 or maxq < 1 or maxk < 1:
        raise ValueError("varlen attention needs at least one sequence with a query and a key")
    seq = _Seq(B, H, D, maxq, maxk, cu_seqlens_q, cu_seqlens_k, None, resolve_tf32(allow_tf32))
    return _run(_prep(q), _prep(k), _prep(v), seq, softmax_scale, deterministic, num_splits)
