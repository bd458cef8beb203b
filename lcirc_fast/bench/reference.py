"""Eager re-implementation in the style of the reference code, on an LCIRCForCausalLM's weights.

Differences from the package's fast path, on purpose:
    * every Perceiver layer normalises and projects the segment itself (no folded LayerNorm,
      no single K/V matmul for all layers);
    * attention is einsum + softmax (the score matrix is materialised), not SDPA;
    * every GCA block re-projects the memory K/V on every call (no cache, no shared matmul).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..segmenting import balanced_boundaries


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D]; no mask, scale 1/sqrt(D)."""
    s = torch.einsum("bqhd,bkhd->bhqk", q * (1.0 / math.sqrt(q.shape[-1])), k)
    s = s - s.amax(-1, keepdim=True).detach()
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v)


def _heads(x: torch.Tensor, heads: int, hd: int) -> torch.Tensor:
    return x.view(x.shape[0], x.shape[1], heads, hd)


def reference_compress(model, ids: torch.Tensor) -> torch.Tensor:
    """Memory [B, S*K, d] of `ids` [B, N] with the model's ~segment_len segmenting rule."""
    cfg, comp = model.config, model.compressor
    emb = model.base.get_input_embeddings()
    seg = min(cfg.segment_len, (cfg.max_segment_len + 1) // 2)
    bounds = balanced_boundaries(ids.shape[1], seg)
    b = ids.shape[0]
    state = model.latents[None].expand(b, -1, -1)
    slots = []
    for lo, hi in zip(bounds, bounds[1:]):
        x = emb(ids[:, lo:hi]) + comp.pos_emb[: hi - lo]
        z = state
        for layer in comp.layers:
            a = layer.attn
            k, v = a.to_kv(a.norm_x(x)).chunk(2, dim=-1)
            q = a.to_q(a.norm_latents(z))
            o = eager_attention(_heads(q, a.heads, a.head_dim), _heads(k, a.heads, a.head_dim),
                                _heads(v, a.heads, a.head_dim))
            z = z + a.to_out(o.flatten(2))
            f = layer.ff
            z = z + f.w2(F.silu(f.w1(f.norm(z))))
        state = comp.norm(z)
        slots.append(state)
    return torch.cat(slots, 1)


def reference_gca(block, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
    """One GCA block, re-projecting the memory K/V: x [B, T, d], memory [B, M, d]."""
    a = block.attn
    k, v = a.to_kv(memory).chunk(2, dim=-1)
    q = a.to_q(a.norm(x))
    o = eager_attention(_heads(q, a.heads, a.head_dim), _heads(k, a.heads, a.head_dim),
                        _heads(v, a.heads, a.head_dim))
    x = x + torch.tanh(block.attn_gate).to(x.dtype) * a.to_out(o.flatten(2))
    f = block.ff
    return x + torch.tanh(block.ff_gate).to(x.dtype) * f.w2(F.silu(f.w1(f.norm(x))))


def reference_forward(model, ids: torch.Tensor, memory: torch.Tensor, **base_kwargs):
    """The base model over `ids` [B, T] with reference-style GCA over `memory` [B, M, d]."""
    layers = model.base.model.layers
    handles = []

    def make(name):
        def hook(module, args, kwargs):
            if args:
                return (reference_gca(model.gca[name], args[0], memory), *args[1:]), kwargs
            kwargs["hidden_states"] = reference_gca(model.gca[name], kwargs["hidden_states"],
                                                    memory)
            return args, kwargs
        return hook

    for name in model.gca.keys():
        handles.append(layers[int(name)].register_forward_pre_hook(make(name), with_kwargs=True))
    try:
        return model.base(input_ids=ids, **base_kwargs)
    finally:
        for h in handles:
            h.remove()
