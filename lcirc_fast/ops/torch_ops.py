"""The "torch" backend: SDPA cross-attention and eager epilogues (any device, any float dtype)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .layernorm.naive import naive_layer_norm
from .registry import register
from .tanh_gate.naive import naive_gated_residual


def _key_mask(kv_lengths: torch.Tensor, lk: int) -> torch.Tensor:
    """bool [B, 1, 1, Lk]: True where the key is a real (not padding) position."""
    keep = torch.arange(lk, device=kv_lengths.device)[None, :] < kv_lengths[:, None]
    return keep[:, None, None, :]


@register("cross_attention", "torch")
def sdpa_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    kv_lengths: torch.Tensor | None = None, softmax_scale: float | None = None,
                    deterministic: bool = False, *, allow_tf32: bool | None = None) -> torch.Tensor:
    """SDPA over [B, L, H, D] inputs; kv_lengths int [B] (each >= 1) masks padded keys.
    ``deterministic`` and ``allow_tf32`` are accepted for the common signature and ignored (torch's
    own settings apply)."""
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    mask = None if kv_lengths is None else _key_mask(kv_lengths, k.shape[1])
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask, scale=scale)
    return o.transpose(1, 2)


@register("gated_residual", "torch")
def torch_gated_residual(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + tanh(gate) * branch; gate: one-element fp32 (used 0-dim, so it does not promote x)."""
    return naive_gated_residual(x, branch, gate.reshape(()))


@register("layer_norm", "torch")
def torch_layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5, add: torch.Tensor | None = None) -> torch.Tensor:
    """LayerNorm(x + add) over the last dim; add broadcastable to x."""
    return naive_layer_norm(x, weight, bias, eps, add)

