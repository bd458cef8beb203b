"""Pre-LayerNorm SiLU MLP shared by the Perceiver layers and the GCA blocks."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .binding import UsesOps


class FeedForward(UsesOps, nn.Module):
    """y = W2 silu(W1 LN(x)); x: [..., d] -> [..., d]. No biases in W1/W2. Ops: ``self.ops``."""

    def __init__(self, dim: int, hidden: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm = nn.LayerNorm(dim, eps=eps, **kw)
        self.w1 = nn.Linear(dim, hidden, bias=False, **kw)
        self.w2 = nn.Linear(hidden, dim, bias=False, **kw)
        self._init_ops()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ops.layer_norm(x, self.norm.weight, self.norm.bias, self.norm.eps)
        return self.w2(F.silu(self.w1(h)))
