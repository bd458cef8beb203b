"""Gated cross-attention (GCA) block, also used as the QD-LCIRC query mixer.

x <- x + tanh(a_attn) * W_out MHA(W_q LN(x), K, V),  [K | V] = W_kv M   (M not normalised)
x <- x + tanh(a_ff)   * W2 silu(W1 LN(x))
Both gates are fp32 parameters of shape [1] (so DeepSpeed ZeRO-3 can partition them),
initialised to 0, so a fresh block is the identity. They enter the residual as 0-dim views, which
do not promote a bf16 activation (the reference code's 0-dim fp32 gates).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .binding import UsesOps
from .feedforward import FeedForward
from .linear import PackedLinear
from .zero import whole

GATE_NAMES = ("attn_gate", "ff_gate")


def is_gate(name: str) -> bool:
    """True for a state-dict key naming a GCA / mixer gate."""
    return name.rsplit(".", 1)[-1] in GATE_NAMES


def gates_to_1d(state: dict) -> dict:
    """`state` with 0-dim gate tensors (files written before the gates had shape [1]) reshaped
    to [1]; other entries unchanged."""
    return {k: v.reshape(1) if is_gate(k) and isinstance(v, torch.Tensor) and v.dim() == 0 else v
            for k, v in state.items()}


class GCAAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, eps: float, device=None, dtype=None,
                 packed: bool = False):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        inner = heads * head_dim
        linear = PackedLinear if packed else nn.Linear
        self.heads, self.head_dim = heads, head_dim
        self.norm = nn.LayerNorm(dim, eps=eps, **kw)
        self.to_q = linear(dim, inner, bias=False, **kw)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False, **kw)  # rows [0, inner): K; rest: V
        self.to_out = linear(inner, dim, bias=False, **kw)


class GatedCrossAttentionBlock(UsesOps, nn.Module):
    """One GCA block. Shapes: x [B, T, d]; memory [B, M, d]; K/V [B, M, heads, head_dim].
    Ops: ``self.ops`` (see `lcirc_fast.modules.bind_ops`). ``packed=True`` (the QD mixer: K rows
    per call, a call per segment) makes the row-wise projections `PackedLinear`."""

    def __init__(self, dim: int, heads: int, head_dim: int, ffn: int, eps: float = 1e-5,
                 device=None, dtype=None, packed: bool = False):
        super().__init__()
        self.attn_gate = nn.Parameter(torch.zeros(1, device=device, dtype=torch.float32))
        self.ff_gate = nn.Parameter(torch.zeros(1, device=device, dtype=torch.float32))
        self.attn = GCAAttention(dim, heads, head_dim, eps, device=device, dtype=dtype,
                                 packed=packed)
        self.ff = FeedForward(dim, ffn, eps, device=device, dtype=dtype, packed=packed)
        self._init_ops()

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory [B, M, d] -> (k, v), each [B, M, heads, head_dim]."""
        b, m, _ = memory.shape
        w, = whole(self.attn.to_kv.weight)     # called outside forward
        kv = F.linear(memory, w).view(b, m, 2, self.attn.heads, self.attn.head_dim)
        return kv[:, :, 0], kv[:, :, 1]

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                kv_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, d] attends to projected memory k, v [B, M, H, Dh] -> [B, T, d] (x's dtype).
        k, v may also be [1, M, H, Dh], one memory for every row: the B x T queries then attend
        to it in one call (cross-attention has no mask between queries), reading it once.
        kv_lengths: optional int [B] (or [1] with a shared memory); memory rows at positions
        >= kv_lengths[b] are padding."""
        a, ops = self.attn, self.ops
        b, t, _ = x.shape
        h = ops.layer_norm(x, a.norm.weight, a.norm.bias, a.norm.eps)
        q = a.to_q(h).view(b, t, a.heads, a.head_dim)
        if k.shape[0] == 1 and b > 1 and (kv_lengths is None or kv_lengths.numel() == 1):
            o = ops.cross_attention(q.reshape(1, b * t, a.heads, a.head_dim), k, v,
                                    kv_lengths=kv_lengths).view(b, t, a.heads, a.head_dim)
        else:
            if k.shape[0] != b:
                k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
            if kv_lengths is not None and kv_lengths.shape[0] != b:
                kv_lengths = kv_lengths.expand(b)
            o = ops.cross_attention(q, k, v, kv_lengths=kv_lengths)
        x = ops.gated_residual(x, a.to_out(o.reshape(b, t, a.heads * a.head_dim)), self.attn_gate.reshape(()))
        return ops.gated_residual(x, self.ff(x), self.ff_gate.reshape(()))
