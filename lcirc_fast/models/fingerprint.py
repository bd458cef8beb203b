"""The fingerprint of a model: what a compressed memory depends on, hashed."""
from __future__ import annotations

import hashlib
import json

import torch

from ..modules.gca import is_gate


class Fingerprint:
    """sha256 of the compressor-relevant config and of every tensor a memory depends on:
    latents, compressor, mixer, token embeddings and their scale, and the first
    `compressor_input_layers` decoder layers of `model` (an `LCIRCForCausalLM`). Cached until a
    weight changes (tensor identity or version counter)."""

    def __init__(self, model):
        self.model = model
        self._cache: tuple | None = None

    def params(self) -> list:
        m = self.model
        params = [("latents", m.latents)]
        params += [("compressor." + n, p) for n, p in m.compressor.named_parameters()]
        if m.mixer is not None:
            params += [("mixer." + n, p) for n, p in m.mixer.named_parameters()]
        params.append(("embed", m.base.get_input_embeddings().weight))
        layers = m.adapter.decoder_layers(m.base)
        for i in range(m.config.compressor_input_layers):   # contextual input depends on them
            params += [(f"base.layers.{i}." + n, p) for n, p in layers[i].named_parameters()]
        return params

    def __call__(self) -> str:
        m = self.model
        params = self.params()
        key = tuple((id(p), p._version) for _, p in params)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        h = hashlib.sha256(json.dumps(m.config.compressor_signature(), sort_keys=True).encode())
        scale = m.adapter.input_scale(m.base.config)
        if scale != 1.0:                  # absent at 1, so unscaled families keep their prints
            h.update(f"embed_scale:{scale!r}".encode())
        for name, p in params:
            t = p.detach().contiguous().cpu()
            if is_gate(name):
                t = t.reshape(())      # hashed as the 0-dim gates of earlier versions
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"")
        fp = h.hexdigest()
        self._cache = (key, fp)
        return fp


