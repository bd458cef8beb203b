"""Backend dispatch for the ops the modules use.

Every function takes ``backend`` ("torch" or "triton"; resolve "auto" with
`lcirc_fast.backend.resolve_backend` first). The torch path is SDPA plus eager epilogues; the
triton path calls the fused kernels registered in `TRITON_OPS`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .gated_xattn.naive import naive_gated_residual
from .layernorm.naive import naive_layer_norm

# name -> callable with the same signature as the torch function below (minus `backend`).
# The triton kernels register themselves here on import of `lcirc_fast.ops.triton_ops`.
TRITON_OPS: dict[str, object] = {}


def _triton(name: str):
    if not TRITON_OPS:
        from . import triton_ops  # noqa: F401  (registers the kernels)
    try:
        return TRITON_OPS[name]
    except KeyError:
        raise NotImplementedError(f"no triton kernel is registered for op {name!r}") from None


def _key_mask(kv_lengths: torch.Tensor, lk: int) -> torch.Tensor:
    """bool [B, 1, 1, Lk]: True where the key is a real (not padding) position."""
    keep = torch.arange(lk, device=kv_lengths.device)[None, :] < kv_lengths[:, None]
    return keep[:, None, None, :]


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    kv_lengths: torch.Tensor | None = None, softmax_scale: float | None = None,
                    deterministic: bool = False, backend: str = "torch") -> torch.Tensor:
    """Non-causal multi-head cross-attention.

    Args:
        q: [B, Lq, H, D]; k, v: [B, Lk, H, D], same dtype and device.
        kv_lengths: optional int64 [B]; keys at positions >= kv_lengths[b] are padding.
            Every length must be >= 1.
        softmax_scale: defaults to 1/sqrt(D).
        deterministic: ask the triton backward for its atomic-free path.
    Returns:
        [B, Lq, H, D] in q's dtype.
    """
    if backend == "triton":
        return _triton("cross_attention")(q, k, v, kv_lengths=kv_lengths,
                                          softmax_scale=softmax_scale, deterministic=deterministic)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    mask = None if kv_lengths is None else _key_mask(kv_lengths, k.shape[1])
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                       attn_mask=mask, scale=scale)
    return o.transpose(1, 2)


def gated_residual(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor,
                   backend: str = "torch") -> torch.Tensor:
    """x + tanh(gate) * branch; x, branch: [..., d]; gate: 0-dim fp32."""
    if backend == "triton":
        return _triton("gated_residual")(x, branch, gate)
    return naive_gated_residual(x, branch, gate)


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
               eps: float = 1e-5, add: torch.Tensor | None = None,
               backend: str = "torch") -> torch.Tensor:
    """LayerNorm(x + add) over the last dim."""
    if backend == "triton":
        return _triton("layer_norm")(x, weight, bias, eps, add)
    return naive_layer_norm(x, weight, bias, eps, add)
