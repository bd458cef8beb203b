"""Perceiver compressor: h(i) = Perceiver(h(i-1), Embed(s_i) + P[:|s_i|]).

The keys and values of every layer depend only on the segment (never on the recurrent state),
so `segment_kv` produces all layers' K/V with one shared LayerNorm normalisation and one matrix
product (each layer's LN affine is folded into its K/V weight); `segments_kv` does the same for
several equal-length segments at once. `step` is the small sequential part: the latent queries,
attention over the precomputed K/V, output projection and MLP.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .binding import UsesOps
from .feedforward import FeedForward
from .linear import PackedLinear
from .zero import whole


class PerceiverAttention(UsesOps, nn.Module):
    """Latents attend to the segment. Parameter names follow the reference layout. Ops: ``self.ops``."""

    def __init__(self, dim: int, heads: int, head_dim: int, eps: float, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.norm_x = nn.LayerNorm(dim, eps=eps, **kw)
        self.norm_latents = nn.LayerNorm(dim, eps=eps, **kw)
        self.to_q = PackedLinear(dim, inner, bias=False, **kw)      # K rows per call
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False, **kw)  # rows [0, inner): K; rest: V
        self.to_out = PackedLinear(inner, dim, bias=False, **kw)
        self._init_ops()

    def forward(self, z: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """z: [B, K, d]; k, v: [B, L, H, Dh] -> attention output after to_out, [B, K, d]."""
        b, n, _ = z.shape
        zn = self.ops.layer_norm(z, self.norm_latents.weight, self.norm_latents.bias, self.norm_latents.eps)
        q = self.to_q(zn).view(b, n, self.heads, self.head_dim)
        o = self.ops.cross_attention(q, k, v)
        return self.to_out(o.reshape(b, n, self.heads * self.head_dim))


class PerceiverLayer(nn.Module):
    def __init__(self, dim, heads, head_dim, ffn, eps, device=None, dtype=None):
        super().__init__()
        self.attn = PerceiverAttention(dim, heads, head_dim, eps, device=device, dtype=dtype)
        self.ff = FeedForward(dim, ffn, eps, device=device, dtype=dtype, packed=True)


class PerceiverCompressor(UsesOps, nn.Module):
    """Recurrent Perceiver compressor. Ops: ``self.ops`` (see `lcirc_fast.modules.bind_ops`).

    Args:
        dim: model width d; heads x head_dim: attention inner size; ffn: MLP size.
        num_layers: Perceiver layers; max_segment_len: rows of the position table `pos_emb`.
    """

    def __init__(self, dim: int, num_layers: int, heads: int, head_dim: int, ffn: int,
                 max_segment_len: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.pos_emb = nn.Parameter(torch.randn(max_segment_len, dim, device=device, dtype=dtype))
        self.layers = nn.ModuleList(
            PerceiverLayer(dim, heads, head_dim, ffn, eps, device=device, dtype=dtype)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim, eps=eps, device=device, dtype=dtype)
        self.eps = eps
        self._max_segment_len = max_segment_len   # not pos_emb.shape: a ZeRO-3 shard is empty
        self._init_ops()

    @property
    def max_segment_len(self) -> int:
        return self._max_segment_len

    @property
    def kv_width(self) -> int:
        """Columns of the K/V product: layers x 2 (K, V) x heads x head_dim."""
        return len(self.layers) * 2 * self.heads * self.head_dim

    def folded_kv_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All layers' K/V projections with their norm_x affine folded in.

        Returns W [n_layers * 2 * inner, d] and bias [n_layers * 2 * inner] such that
        ``F.linear(normalize(x), W, bias)`` equals ``cat_n(to_kv_n(norm_x_n(x)))``.
        """
        ws, bs = [], []
        for layer in self.layers:
            a = layer.attn
            kv, nw, nb = whole(a.to_kv.weight, a.norm_x.weight, a.norm_x.bias)
            ws.append(kv * nw[None, :])
            bs.append(kv @ nb)
        return torch.cat(ws, 0), torch.cat(bs, 0)

    def segment_kv(self, embeds: torch.Tensor,
                   folded: tuple[torch.Tensor, torch.Tensor] | None = None
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """K/V of every layer for one segment.

        Args:
            embeds: [B, L, d] frozen token embeddings of the segment (L <= max_segment_len).
            folded: optional precomputed `folded_kv_weight()` (reuse it across segments).
        Returns:
            list over layers of (k, v), each [B, L, heads, head_dim].
        """
        if embeds.dim() != 3:
            raise ValueError(f"embeds must be [batch, length, dim], got {tuple(embeds.shape)}")
        return self.segments_kv(embeds[:, None], folded)[0]

    def segments_kv(self, embeds: torch.Tensor,
                    folded: tuple[torch.Tensor, torch.Tensor] | None = None,
                    out: torch.Tensor | None = None
                    ) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """K/V of every layer for C segments of equal length, from one matrix product.

        Args:
            embeds: [B, C, L, d] token embeddings of C consecutive segments of L tokens each.
            folded: optional precomputed `folded_kv_weight()`.
            out: optional contiguous buffer of B * C * L * layers * 2 * inner elements (embeds'
                dtype and device) that the product writes into (no autograd graph through it).
        Returns:
            list over the C segments of `segment_kv`-style lists: per layer (k, v), each
            [B, L, heads, head_dim] (views into one [B, C, L, layers, 2, heads, head_dim] tensor).
        """
        if embeds.dim() != 4:
            raise ValueError(f"embeds must be [batch, segments, length, dim], got "
                             f"{tuple(embeds.shape)}")
        b, c, length, d = embeds.shape
        if d != self.dim:
            raise ValueError(f"embeds have width {d} but the compressor has dim {self.dim}")
        if length > self.max_segment_len:
            raise ValueError(f"segment of {length} tokens is longer than the position table "
                             f"({self.max_segment_len} rows; raise LCIRCConfig.max_segment_len)")
        pos, = whole(self.pos_emb)
        xhat = self.ops.layer_norm(embeds, None, None, self.eps, add=pos[:length])
        w, bias = folded if folded is not None else self.folded_kv_weight()
        kv = self._kv_product(xhat, w, bias, out).view(b, c, length, len(self.layers), 2,
                                                       self.heads, self.head_dim)
        # unbind (one stacked gradient in backward), not indexing (a zeroed whole-size gradient
        # per view)
        return [[tuple(layer.unbind(2)) for layer in seg.unbind(2)] for seg in kv.unbind(1)]

    @staticmethod
    def _kv_product(xhat: torch.Tensor, w: torch.Tensor, bias: torch.Tensor,
                    out: torch.Tensor | None = None) -> torch.Tensor:
        """The K/V matrix product: xhat [..., d] -> [..., layers * 2 * inner] (into `out`)."""
        if out is None:
            return F.linear(xhat, w, bias)
        rows = xhat.numel() // xhat.shape[-1]
        if out.numel() != rows * w.shape[0] or not out.is_contiguous():
            raise ValueError(f"out must be a contiguous buffer of {rows * w.shape[0]} elements, "
                             f"got {tuple(out.shape)}")
        flat = out.view(rows, w.shape[0])
        torch.addmm(bias, xhat.reshape(rows, -1), w.t(), out=flat)
        return flat.view(*xhat.shape[:-1], w.shape[0])

    def step(self, state: torch.Tensor, kvs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """One recurrence step: state [B, K, d] and the segment's K/V -> LN_final(Z) [B, K, d]."""
        z = state
        for layer, (k, v) in zip(self.layers, kvs):
            z = z + layer.attn(z, k, v)
            z = z + layer.ff(z)
        weight, bias = whole(self.norm.weight, self.norm.bias)
        return self.ops.layer_norm(z, weight, bias, self.norm.eps)

    def forward(self, state: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """h(i) = Perceiver(state, embeds): state [B, K, d], embeds [B, L, d] -> [B, K, d]."""
        return self.step(state, self.segment_kv(embeds))
