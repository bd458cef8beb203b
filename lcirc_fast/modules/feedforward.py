"""Pre-LayerNorm SiLU MLP shared by the Perceiver layers and the GCA blocks."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .binding import UsesOps
from .linear import PackedLinear


class FeedForward(UsesOps, nn.Module):
    """y = W2 silu(W1 LN(x)); x: [..., d] -> [..., d]. No biases in W1/W2. Ops: ``self.ops``.

    ``packed=True`` makes W1/W2 `PackedLinear` (for few rows per call, many calls).
    """

    def __init__(self, dim: int, hidden: int, eps: float = 1e-5, device=None, dtype=None,
                 packed: bool = False):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        linear = PackedLinear if packed else nn.Linear
        self.norm = nn.LayerNorm(dim, eps=eps, **kw)
        self.w1 = linear(dim, hidden, bias=False, **kw)
        self.w2 = linear(hidden, dim, bias=False, **kw)
        self._init_ops()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ops.layer_norm(x, self.norm.weight, self.norm.bias, self.norm.eps)
        return self.w2(F.silu(self.w1(h)))
