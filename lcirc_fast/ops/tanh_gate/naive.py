"""Reference gated residual epilogue: y = x + tanh(gate) * branch."""
from __future__ import annotations

import torch


def naive_gated_residual(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x, branch: [..., d] (same dtype); gate: 0-dim fp32 parameter. Output has x's dtype.

    A 0-dim fp32 gate does not promote a bf16 activation (the reference code's numerics), and
    with gate == 0 the output equals x bit for bit.
    """
    return x + torch.tanh(gate) * branch
