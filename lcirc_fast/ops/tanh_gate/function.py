"""Host launchers, torch custom ops (``lcirc::gated_residual_fwd`` / ``_bwd``) and the functional API
of the gated residual y = x + tanh(gate) * branch."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..utils.runtime import check_device, count_launch, interpreting
from . import kernels as K

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _block() -> int:
    return 1024 if interpreting() else 4096


def _acc(*dtypes) -> tl.dtype:
    return tl.float64 if torch.float64 in dtypes else tl.float32


def gated_forward(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    n = x.numel()
    blk = _block()
    count_launch("gated_fwd")
    K._gated_fwd_kernel[(triton.cdiv(n, blk),)](x, branch, gate, out, n,
                                                ACC=_acc(x.dtype, gate.dtype), BLOCK=blk)
    return out


def gated_backward(dout, branch, gate, need_dbranch: bool, need_dgate: bool):
    """Returns (d_branch or None, d_gate or None)."""
    n = dout.numel()
    blk = _block()
    nprog = triton.cdiv(n, blk)
    acc = _acc(dout.dtype, gate.dtype)
    acc_t = torch.float64 if acc == tl.float64 else torch.float32
    dy = torch.empty(branch.shape, dtype=branch.dtype, device=dout.device) if need_dbranch else None
    part = torch.empty(nprog, dtype=acc_t, device=dout.device) if need_dgate else None
    dummy = torch.zeros(1, dtype=acc_t, device=dout.device)
    count_launch("gated_bwd")
    K._gated_bwd_kernel[(nprog,)](dout, branch, gate, dy if dy is not None else dummy,
                                  part if part is not None else dummy, n,
                                  NEED_DY=need_dbranch, NEED_DG=need_dgate, ACC=acc, BLOCK=blk)
    dg = None
    if need_dgate:
        dg = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
        count_launch("gate_grad")
        K._gate_grad_kernel[(1,)](part, gate, dg, nprog, ACC=acc, BLOCK=1024)
    return dy, dg


# ---- torch custom ops: the launchers above as opaque ops with fake shapes and autograd --------

@torch.library.custom_op("lcirc::gated_residual_fwd", mutates_args=())
def gated_residual_fwd(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x, branch: contiguous, same shape and dtype; gate: one element. Returns x + tanh(gate) * branch."""
    return gated_forward(x, branch, gate)


@gated_residual_fwd.register_fake
def _(x, branch, gate):
    return x.new_empty(x.shape)


@torch.library.custom_op("lcirc::gated_residual_bwd", mutates_args=())
def gated_residual_bwd(dout: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor, need_dbranch: bool,
                       need_dgate: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(d_branch = tanh(g) dout, d_gate = sum(dout * branch) (1 - tanh(g)^2)) in fp32, fixed-order
    two-stage reduction; a gradient not asked for comes back empty. dout: contiguous."""
    db, dg = gated_backward(dout, branch, gate, need_dbranch, need_dgate)
    return (db if db is not None else branch.new_zeros(0)), (dg if dg is not None else gate.new_zeros(0))


@gated_residual_bwd.register_fake
def _(dout, branch, gate, need_dbranch, need_dgate):
    return (branch.new_empty(branch.shape if need_dbranch else (0,)),
            gate.new_empty(gate.shape if need_dgate else (0,)))


def _gated_setup_context(ctx, inputs, output):
    _, branch, gate = inputs
    ctx.save_for_backward(branch if ctx.needs_input_grad[2] else None, gate)


def _gated_backward(ctx, dout):
    branch, gate = ctx.saved_tensors
    need_dx, need_db, need_dg = ctx.needs_input_grad[:3]
    dout = dout.contiguous()
    db = dg = None
    if need_db or need_dg:
        db, dg = gated_residual_bwd(dout, branch if branch is not None else dout, gate, need_db, need_dg)
    return (dout if need_dx else None), (db if need_db else None), (dg if need_dg else None)


gated_residual_fwd.register_autograd(_gated_backward, setup_context=_gated_setup_context)


def gated_residual(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """y = x + tanh(gate) * branch, computed in fp32 and rounded once to x's dtype.

    Args:
        x, branch: same shape and dtype (fp16/bf16/fp32/fp64).
        gate: one-element float tensor (the fp32 gate parameter, any shape with one element).
    """
    if x.shape != branch.shape:
        raise ValueError(f"x and branch shapes differ: {tuple(x.shape)} vs {tuple(branch.shape)}")
    if x.dtype != branch.dtype:
        raise ValueError(f"x and branch dtypes differ: {x.dtype} vs {branch.dtype}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise NotImplementedError(f"triton gated_residual: dtype {x.dtype} is not supported")
    if gate.numel() != 1 or not gate.is_floating_point():
        raise ValueError(f"gate must be a one-element float tensor, got shape {tuple(gate.shape)}, {gate.dtype}")
    check_device(x, branch, gate)
    x, branch = x.contiguous(), branch.contiguous()
    grads = torch.is_grad_enabled() and (x.requires_grad or branch.requires_grad or gate.requires_grad)
    if not grads and not torch.compiler.is_compiling():
        return gated_forward(x, branch, gate)   # no graph to record: skip the custom op's dispatch
    return gated_residual_fwd(x, branch, gate)
