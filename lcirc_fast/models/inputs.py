"""What the Perceiver reads: a segment's frozen token embeddings, or contextual hidden states."""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch
import torch.nn as nn

from ..config import LCIRCConfig
from .base_adapter import BaseAdapter


class _StopForward(Exception):
    """Raised by a forward hook to end a base-model pass early."""


class SegmentInputs:
    """Token ids -> the compressor's input, read from the frozen base model.

    Args:
        base: the frozen causal LM; adapter: its family's `BaseAdapter`; config: the resolved
        `LCIRCConfig`; no_injection: a context-manager factory under which the base runs without
        the GCA blocks (the contextual pass must not read a memory).
    """

    def __init__(self, base: nn.Module, adapter: BaseAdapter, config: LCIRCConfig,
                 no_injection: Callable[[], ContextManager] = contextlib.nullcontext):
        self.base, self.adapter, self.config = base, adapter, config
        self.no_injection = no_injection
        self._rms_cache: tuple | None = None

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """int64 [..., L] -> [..., L, d]: exactly what the base feeds its first decoder layer
        (the family's embedding scale included), in the base model's dtype."""
        return self.adapter.embed(self.base, ids)

    def embed_rms(self) -> float:
        """Mean row RMS of the embedded table (the table times the family's input scale), cached
        until the table changes."""
        weight = self.base.get_input_embeddings().weight
        key = (id(weight), weight._version)
        if self._rms_cache is None or self._rms_cache[0] != key:
            rms = float(weight.detach().float().pow(2).mean(-1).sqrt().mean())
            rms *= abs(self.adapter.input_scale(self.base.config))
            self._rms_cache = (key, rms)
        return self._rms_cache[1]

    def _precision(self, device: torch.device) -> ContextManager:
        """The contextual pass's autocast (`config.compressor_input_autocast`), or nothing."""
        name = self.config.compressor_input_autocast
        if name is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=getattr(torch, name))

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """Segments of token ids int64 [..., L] -> the Perceiver's input [..., L, d].

        `config.compressor_input_layers` = 0: `embed_tokens` (the paper). k > 0: the frozen
        LLM's hidden states after its first k decoder layers, each segment run alone (positions
        from 0, no memory, no gradient), RMS-normalised per token and scaled to `embed_rms`; in
        the base model's dtype. With `config.compressor_input_autocast` those k layers run under
        `torch.autocast` at that dtype.
        """
        k = self.config.compressor_input_layers
        if k == 0:
            return self.embed_tokens(ids)
        flat = ids.reshape(-1, ids.shape[-1])
        seen: dict = {}

        def grab(_module, _args, out):
            seen["h"] = out[0] if isinstance(out, tuple) else out
            raise _StopForward

        handle = self.adapter.decoder_layers(self.base)[k - 1].register_forward_hook(grab)
        try:
            with self.no_injection(), torch.no_grad(), self._precision(flat.device):
                try:
                    self.adapter.decoder_stack(self.base)(input_ids=flat, use_cache=False)
                except _StopForward:
                    pass
        finally:
            handle.remove()
        h = seen["h"].float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.config.norm_eps)
        dtype = self.base.get_input_embeddings().weight.dtype
        return (h * self.embed_rms()).to(dtype).reshape(*ids.shape, -1)
