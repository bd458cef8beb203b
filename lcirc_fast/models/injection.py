"""Memory injection: the GCA blocks run in forward pre-hooks of the decoder layers they precede.

`Injection.active(memory)` (or `using(kv, lengths)`) makes the memory's per-layer keys/values
visible to the hooks for the duration of a base-model call; outside it (and inside `paused()`)
the hooks return at once and the base runs exactly as before wrapping.

What a call reads lives in a `contextvars.ContextVar`, never on the shared module: each thread
(and each asyncio task) sees only the memory its own `active` published, so concurrent forwards
of one model with different memories cannot read each other's.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..memory import CompressedMemory
from ..modules.zero import whole
from .base_adapter import BaseAdapter


class Injection:
    """The GCA hooks of one model and its memory K/V projection.

    Args:
        base: the frozen causal LM; adapter: its `BaseAdapter`; gca: the blocks, keyed by the
        index (a str) of the decoder layer each precedes; heads / head_dim: the blocks' K/V
        layout.
    """

    def __init__(self, base: nn.Module, adapter: BaseAdapter, gca: nn.ModuleDict, heads: int,
                 head_dim: int):
        self.adapter, self.gca = adapter, gca
        self.heads, self.head_dim = heads, head_dim
        self._current: contextvars.ContextVar = contextvars.ContextVar(f"lcirc_memory_{id(self)}",
                                                                      default=None)
        layers = adapter.decoder_layers(base)
        self._hooks = [layers[int(name)].register_forward_pre_hook(self._hook(name),
                                                                   with_kwargs=True)
                       for name in gca]

    def remove_hooks(self) -> None:
        """Detach the hooks from the base model."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ------------------------------------------------------------------ memory K/V
    def project(self, hidden: torch.Tensor) -> dict:
        """hidden [B, M, d] -> {layer: (k, v)}, k, v [B, M, H, Dh], every GCA layer from one
        matrix product."""
        blocks = list(self.gca.items())
        w = torch.cat(whole(*(b.attn.to_kv.weight for _, b in blocks)), 0)
        bsz, m, _ = hidden.shape
        kv = F.linear(hidden, w).view(bsz, m, len(blocks), 2, self.heads, self.head_dim)
        # unbind, not indexing: the backward of an index allocates a zeroed gradient of the whole
        # product per view (8 for 4 layers), that of unbind stacks the views' gradients once
        return {name: tuple(layer.unbind(2)) for (name, _), layer in zip(blocks, kv.unbind(2))}

    def memory_kv(self, memory: CompressedMemory, use_cache: bool = True) -> dict:
        """`project(memory.hidden)`; outside autograd the result is cached in the memory, keyed
        by the memory tensor and the GCA weights' versions, so decoding projects it once."""
        hidden = memory.hidden
        key = (id(hidden), hidden._version) + tuple(
            (id(b.attn.to_kv.weight), b.attn.to_kv.weight._version) for b in self.gca.values())
        cacheable = use_cache and not torch.is_grad_enabled()
        if cacheable:
            kv = memory.cached_kv(key)
            if kv is not None:
                return kv
        kv = self.project(hidden)
        if cacheable:
            memory.store_kv(key, kv)
        return kv

    # ------------------------------------------------------------------ hooks
    def _hook(self, name: str):
        adapter = self.adapter

        def hook(module, args, kwargs):
            cur = self._current.get()
            if cur is None:
                return None
            x = adapter.hidden_states(args, kwargs)
            k, v = cur["kv"][name]          # [B, M, H, Dh], or [1, ...] shared by every row
            lengths = cur["lengths"]
            if k.shape[0] != 1 and k.shape[0] != x.shape[0]:
                raise ValueError(f"memory K/V for {k.shape[0]} rows, hidden states for "
                                 f"{x.shape[0]}")
            x = self.gca[name](x, k, v, kv_lengths=lengths)
            return adapter.with_hidden_states(args, kwargs, x)
        return hook

    @contextlib.contextmanager
    def active(self, memory: CompressedMemory | None, use_cache: bool = True):
        """Within this context the base model's forward (in this thread / task) reads `memory`
        (checked by the caller) through the GCA blocks; None: the plain base model."""
        if memory is None:
            yield
            return
        with self.using(self.memory_kv(memory, use_cache=use_cache),
                        None if memory.uniform else memory.lengths):
            yield

    @contextlib.contextmanager
    def using(self, kv: dict, lengths: torch.Tensor | None):
        """Within this context the base model's forward (in this thread / task) reads the
        projected memory `kv` ({layer: (k, v)}, each [B or 1, M, H, Dh]) masked by `lengths`
        (int64 [B] valid vectors per row; None: all M)."""
        token = self._current.set({"kv": kv, "lengths": lengths})
        try:
            yield
        finally:
            self._current.reset(token)

    @contextlib.contextmanager
    def paused(self):
        """Within this context the hooks do nothing (the base runs without the memory)."""
        token = self._current.set(None)
        try:
            yield
        finally:
            self._current.reset(token)
