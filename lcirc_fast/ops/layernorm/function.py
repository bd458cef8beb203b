"""Host launchers, torch custom ops (``lcirc::layer_norm_fwd`` / ``_bwd``) and the functional API of
the fused LayerNorm(x + add)."""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ..utils.runtime import check_device, count_launch, interpreting, next_pow2, num_sms
from . import kernels as K

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_DIM = 65536


def _rows_per_block(block_d: int) -> int:
    budget = 16384 if interpreting() else 4096
    return max(1, min(64, budget // block_d))


def _warps(block_d: int) -> int:
    return 8 if block_d >= 2048 else 4


def _acc(x: torch.Tensor):
    return (tl.float64, torch.float64) if x.dtype == torch.float64 else (tl.float32, torch.float32)


def ln_forward(x2, add2, weight, bias, eps: float, out_dtype, store_stats: bool):
    """x2: [N, d] contiguous; add2: [P, d] contiguous or None. Returns (y [N, d], mean, rstd)."""
    n, d = x2.shape
    acc, acc_t = _acc(x2)
    bd = next_pow2(d)
    br = _rows_per_block(bd)
    y = torch.empty((n, d), dtype=out_dtype, device=x2.device)
    mean = rstd = None
    if store_stats:
        mean = torch.empty(n, dtype=acc_t, device=x2.device)
        rstd = torch.empty(n, dtype=acc_t, device=x2.device)
    dummy = torch.zeros(1, dtype=acc_t, device=x2.device)
    count_launch("ln_fwd")
    K._ln_fwd_kernel[(triton.cdiv(n, br),)](
        x2, add2 if add2 is not None else dummy, weight if weight is not None else dummy,
        bias if bias is not None else dummy, y,
        mean if store_stats else dummy, rstd if store_stats else dummy,
        n, add2.shape[0] if add2 is not None else n, d, eps,
        HAS_ADD=add2 is not None, HAS_W=weight is not None, HAS_B=bias is not None,
        STORE_STATS=store_stats, ACC=acc, BLOCK_R=br, BLOCK_D=bd, num_warps=_warps(bd))
    return y, mean, rstd


def ln_backward(dy2, x2, add2, weight, mean, rstd, need_dx, need_dadd, need_dwb, x_dtype, add_dtype):
    """Returns (dx [N, d] or None, dadd [P, d] or None, dweight_f32 or None, dbias_f32 or None)."""
    n, d = x2.shape
    dev = x2.device
    acc, acc_t = _acc(x2)
    period = add2.shape[0] if add2 is not None else n
    nb = n // period
    bd = next_pow2(d)
    br = _rows_per_block(bd)
    max_groups = 4 if interpreting() else 2 * num_sms(dev)
    groups = max(1, min(triton.cdiv(period, br), max_groups))
    rp = triton.cdiv(triton.cdiv(period, groups), br) * br
    groups = triton.cdiv(period, rp)
    dummy = torch.zeros(1, dtype=acc_t, device=dev)
    dx = torch.empty((n, d), dtype=x_dtype, device=dev) if need_dx else None
    dadd = torch.empty((period, d), dtype=add_dtype, device=dev) if need_dadd else None
    dwp = torch.empty((groups, d), dtype=acc_t, device=dev) if need_dwb else None
    dbp = torch.empty((groups, d), dtype=acc_t, device=dev) if need_dwb else None
    count_launch("ln_bwd")
    K._ln_bwd_kernel[(groups,)](
        x2, add2 if add2 is not None else dummy, weight if weight is not None else dummy,
        mean, rstd, dy2, dx if need_dx else dummy, dadd if need_dadd else dummy,
        dwp if need_dwb else dummy, dbp if need_dwb else dummy, period, nb, rp, d,
        HAS_ADD=add2 is not None, HAS_W=weight is not None, NEED_DX=need_dx, NEED_DADD=need_dadd,
        NEED_DWB=need_dwb, ACC=acc, BLOCK_R=br, BLOCK_D=bd, num_warps=_warps(bd))
    dw = db = None
    if need_dwb:
        dw = torch.empty(d, dtype=acc_t, device=dev)
        db = torch.empty(d, dtype=acc_t, device=dev)
        bc = min(bd, 256)
        for part, out in ((dwp, dw), (dbp, db)):
            count_launch("ln_col_sum")
            K._col_sum_kernel[(triton.cdiv(d, bc),)](part, out, groups, d, ACC=acc, BLOCK_G=16, BLOCK_C=bc)
    return dx, dadd, dw, db


# ---- torch custom ops: the launchers above as opaque ops with fake shapes and autograd --------

def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("lcirc::layer_norm_fwd", mutates_args=())
def layer_norm_fwd(x2: torch.Tensor, add2: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                   bias: Optional[torch.Tensor], eps: float, out_dtype: torch.dtype,
                   store_stats: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LN(x2 + add2[r % P]) row by row. x2 [N, d], add2 [P, d] (P divides N), weight/bias [d]: all
    contiguous. Returns y [N, d] in ``out_dtype`` and the fp32 (fp64) mean and rstd [N]; empty
    statistics when ``store_stats`` is False."""
    y, mean, rstd = ln_forward(x2, add2, weight, bias, eps, out_dtype, store_stats)
    if mean is None:
        acc = _acc_dtype(x2.dtype)
        mean, rstd = x2.new_zeros(0, dtype=acc), x2.new_zeros(0, dtype=acc)
    return y, mean, rstd


@layer_norm_fwd.register_fake
def _(x2, add2, weight, bias, eps, out_dtype, store_stats):
    stats = (x2.shape[0],) if store_stats else (0,)
    acc = _acc_dtype(x2.dtype)
    return x2.new_empty(x2.shape, dtype=out_dtype), x2.new_empty(stats, dtype=acc), x2.new_empty(stats, dtype=acc)


@torch.library.custom_op("lcirc::layer_norm_bwd", mutates_args=())
def layer_norm_bwd(dy: torch.Tensor, x2: torch.Tensor, add2: Optional[torch.Tensor],
                   weight: Optional[torch.Tensor], mean: torch.Tensor, rstd: torch.Tensor,
                   need_dx: bool, need_dadd: bool,
                   need_dwb: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx [N, d] in x2's dtype, dadd [P, d] in add2's dtype, dweight [d], dbias [d] in
    fp32/fp64); the output is recomputed from the saved statistics. A gradient not asked for comes
    back empty. dy: contiguous [N, d]."""
    dx, dadd, dw, db = ln_backward(dy, x2, add2, weight, mean, rstd, need_dx, need_dadd, need_dwb,
                                   x2.dtype, add2.dtype if add2 is not None else None)
    acc = _acc_dtype(x2.dtype)
    return (dx if dx is not None else x2.new_zeros(0), dadd if dadd is not None else x2.new_zeros(0),
            dw if dw is not None else x2.new_zeros(0, dtype=acc),
            db if db is not None else x2.new_zeros(0, dtype=acc))


@layer_norm_bwd.register_fake
def _(dy, x2, add2, weight, mean, rstd, need_dx, need_dadd, need_dwb):
    d, acc = x2.shape[-1], _acc_dtype(x2.dtype)
    return (x2.new_empty(x2.shape if need_dx else (0,)),
            add2.new_empty(add2.shape) if need_dadd else x2.new_empty(0),
            x2.new_empty((d,) if need_dwb else (0,), dtype=acc), x2.new_empty((d,) if need_dwb else (0,), dtype=acc))


def _ln_setup_context(ctx, inputs, output):
    x2, add2, weight, bias = inputs[:4]
    ctx.save_for_backward(x2, add2, weight, output[1], output[2])
    ctx.weight_dtype = weight.dtype if weight is not None else None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _ln_backward(ctx, dy, _dmean, _drstd):
    x2, add2, weight, mean, rstd = ctx.saved_tensors
    need_dx, need_dadd, need_dw, need_db = ctx.needs_input_grad[:4]
    need_dadd = need_dadd and add2 is not None
    need_dwb = need_dw or need_db
    if not (need_dx or need_dadd or need_dwb):
        return (None,) * 7
    dx, dadd, dw, db = layer_norm_bwd(dy.contiguous(), x2, add2, weight, mean, rstd, need_dx, need_dadd,
                                      need_dwb)
    return ((dx if need_dx else None), (dadd if need_dadd else None),
            (dw.to(ctx.weight_dtype) if need_dw else None), (db.to(ctx.bias_dtype) if need_db else None),
            None, None, None)


layer_norm_fwd.register_autograd(_ln_backward, setup_context=_ln_setup_context)


def _check(x, weight, bias, add) -> None:
    for name, t in (("x", x), ("weight", weight), ("bias", bias), ("add", add)):
        if t is not None and t.dtype not in SUPPORTED_DTYPES:
            raise NotImplementedError(f"triton layer_norm: {name} dtype {t.dtype} is not supported")
    d = x.shape[-1]
    if d > MAX_DIM:
        raise NotImplementedError(f"triton layer_norm: last dim {d} > {MAX_DIM}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.shape != (d,):
            raise ValueError(f"{name} must have shape ({d},), got {tuple(t.shape)}")
    if add is not None and add.shape[-1] != d:
        raise ValueError(f"add's last dim {add.shape[-1]} != x's {d}")
    check_device(*[t for t in (x, weight, bias, add) if t is not None])


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5, add: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm(x + add) over the last dim.

    Args:
        x: [..., d]; weight, bias: [d] or None.
        add: optional, broadcastable to x; a trailing-suffix shape such as [L, d] for x [B, L, d]
            is read in place (no broadcast copy) and its gradient is summed over the batch.
    Returns:
        [..., d] in the promoted dtype of x and add (x's dtype without add).
    """
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"x must have a non-empty last dim, got shape {tuple(x.shape)}")
    _check(x, weight, bias, add)
    d = x.shape[-1]
    out_dtype = x.dtype if add is None else torch.promote_types(x.dtype, add.dtype)
    x2 = x.contiguous().view(-1, d)
    add2 = None
    full_add = None
    if add is not None:
        a = add
        while a.dim() > 1 and a.shape[0] == 1:
            a = a.squeeze(0)
        if a.dim() <= x.dim() and tuple(a.shape) == tuple(x.shape[x.dim() - a.dim():]):
            add2 = a.contiguous().view(-1, d)
        else:
            try:
                full_add = torch.broadcast_to(add, x.shape)
            except RuntimeError:
                raise ValueError(f"add shape {tuple(add.shape)} does not broadcast to x {tuple(x.shape)}") from None
            add2 = full_add.contiguous().view(-1, d)
    if x2.shape[0] == 0:
        return torch.empty(x.shape, dtype=out_dtype, device=x.device)
    w = weight.contiguous() if weight is not None else None
    b = bias.contiguous() if bias is not None else None
    grads = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, add))
    if not grads and not torch.compiler.is_compiling():
        # no graph to record: launch directly (the custom op's dispatch costs ~15 us a call on CPU)
        y, _, _ = ln_forward(x2, add2, w, b, float(eps), out_dtype, False)
        return y.view(x.shape)
    y, _, _ = layer_norm_fwd(x2, add2, w, b, float(eps), out_dtype, grads)
    return y.view(x.shape)
