"""Reference cross-attention (fp32 math, explicit softmax): the oracle for the kernels."""
from __future__ import annotations

import math

import torch


def naive_cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                          kv_lengths: torch.Tensor | None = None,
                          softmax_scale: float | None = None) -> torch.Tensor:
    """Unmasked (or key-padding-masked) multi-head cross-attention.

    Args:
        q: [B, Lq, H, D]; k, v: [B, Lk, H, D] (any float dtype; math runs in fp32 or fp64).
        kv_lengths: optional int [B]; keys at positions >= kv_lengths[b] are ignored.
        softmax_scale: defaults to 1/sqrt(D).
    Returns:
        o: [B, Lq, H, D] in q's dtype.
    """
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(q.shape[-1])
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.einsum("bqhd,bkhd->bhqk", q.to(acc), k.to(acc)) * scale
    if kv_lengths is not None:
        keep = torch.arange(k.shape[1], device=k.device)[None, :] < kv_lengths[:, None].to(k.device)
        s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v.to(acc)).to(q.dtype)
