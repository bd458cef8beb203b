"""Reference LayerNorm (optionally adding a position table first)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def naive_layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                     eps: float = 1e-5, add: torch.Tensor | None = None) -> torch.Tensor:
    """LN(x + add) over the last dim. x: [..., d]; add broadcastable to x (e.g. [L, d])."""
    if add is not None:
        x = x + add
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
