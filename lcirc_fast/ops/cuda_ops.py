"""The "cuda" backend: the compiled extension's ops (``torch.ops.lcirc.cuda_*``) in the registry.

`register_extension_ops` runs when `lcirc_fast._ext` loads the extension. It gives
``lcirc::cuda_gated_residual`` an autograd formula (backward: ``cuda_gated_residual_backward``)
and registers `cuda_gated_residual` as ``gated_residual`` on backend "cuda". The other ops have
no CUDA kernel; the record of "cuda" (`lcirc_fast.ops.registry.RECORDS`) sends them to "triton".
"""
from __future__ import annotations

import torch

from .registry import register


def _setup_context(ctx, inputs, output):
    _, branch, gate = inputs
    ctx.save_for_backward(branch if ctx.needs_input_grad[2] else None, gate)   # d_gate needs it


def _backward(ctx, grad_y):
    branch, gate = ctx.saved_tensors
    need_x, need_branch, need_gate = ctx.needs_input_grad[:3]
    grad_y = grad_y.contiguous()
    d_branch = d_gate = None
    if need_branch or need_gate:
        d_branch, d_gate = torch.ops.lcirc.cuda_gated_residual_backward(
            grad_y, branch if branch is not None else grad_y, gate)
    return ((grad_y if need_x else None), (d_branch if need_branch else None),
            (d_gate if need_gate else None))


def cuda_gated_residual(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + tanh(gate) * branch by the extension: x, branch CUDA [..., C] of one dtype (fp32, fp16,
    bf16); gate a one-element fp32 tensor. Output in x's dtype, fp32 math."""
    if x.shape != branch.shape:
        raise ValueError(f"x and branch shapes differ: {tuple(x.shape)} vs {tuple(branch.shape)}")
    if gate.numel() != 1:
        raise ValueError(f"gate must be a one-element float tensor, got shape {tuple(gate.shape)}")
    return torch.ops.lcirc.cuda_gated_residual(x, branch, gate)


_AUTOGRAD_REGISTERED: list[bool] = []


def register_extension_ops() -> None:
    """Autograd for ``lcirc::cuda_gated_residual`` and the "cuda" entries of the registry
    (idempotent)."""
    if not _AUTOGRAD_REGISTERED:
        torch.library.register_autograd("lcirc::cuda_gated_residual", _backward,
                                        setup_context=_setup_context)
        _AUTOGRAD_REGISTERED.append(True)
    register("gated_residual", "cuda", cuda_gated_residual, replace=True)
