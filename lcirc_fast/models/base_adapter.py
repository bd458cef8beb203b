"""What LCIRC needs to know about each family of Hugging Face causal LMs, keyed by `model_type`.

`LCIRCForCausalLM` never guesses at a base model's layout: it resolves one `BaseAdapter` from
`BASE_ADAPTERS[base.config.model_type]` and reaches the decoder layers, the token embeddings
and each layer's hidden-state argument through it. To support another family, add one entry
(and its case in tests/test_families.py); nothing else changes.
"""
from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn as nn

from ..errors import ConfigError


def _sqrt_hidden(config) -> float:
    return config.hidden_size ** 0.5


def _embedding_multiplier(config) -> float:
    return config.embedding_multiplier


@dataclass(frozen=True)
class BaseAdapter:
    """How to reach into one family of causal LMs.

    Attributes:
        backbone: attribute path from the causal LM to its decoder stack (runs contextual input).
        layers: attribute path from the causal LM to the decoder layers (an nn.ModuleList).
        embed_scale: config -> the factor between an embedding-table row and what the first
            decoder layer receives; None for 1.
        scale_in_embedding: True when `get_input_embeddings()` already applies `embed_scale`
            (Gemma's scaled embedding module); False when the backbone's forward multiplies
            afterwards (Granite), so `embed` must do it too.
        hidden_index / hidden_name: where a decoder layer's forward takes its hidden states:
            that positional index, or that keyword when the caller names it.
        cache_kwargs: the causal LM's keywords for the self-attention KV cache, in order of
            preference; the first one its forward takes is used (transformers renamed
            `past_key_values` to `cache`, and both releases are in use).
    """

    backbone: str = "model"
    layers: str = "model.layers"
    embed_scale: Callable[[Any], float] | None = None
    scale_in_embedding: bool = False
    hidden_index: int = 0
    hidden_name: str = "hidden_states"
    cache_kwargs: tuple[str, ...] = ("cache", "past_key_values")

    # ---------------------------------------------------------------- layout
    def decoder_stack(self, base: nn.Module) -> nn.Module:
        return operator.attrgetter(self.backbone)(base)

    def decoder_layers(self, base: nn.Module) -> nn.ModuleList:
        return operator.attrgetter(self.layers)(base)

    def check(self, base: nn.Module) -> None:
        """ConfigError unless `base` has this family's causal-LM layout."""
        mt = base.config.model_type
        try:
            stack, layers = self.decoder_stack(base), self.decoder_layers(base)
        except AttributeError:
            stack = layers = None
        if not isinstance(layers, nn.ModuleList) or not hasattr(base, "lm_head"):
            raise ConfigError(f"the {mt!r} base model {type(base).__name__} lacks {self.layers} "
                              f"or lm_head; pass the causal LM (AutoModelForCausalLM), not its "
                              f"backbone")
        self.cache_kwarg(base)
        if not hasattr(stack, "forward"):
            raise ConfigError(f"the {mt!r} base model has no decoder stack at {self.backbone}")

    def cache_kwarg(self, base: nn.Module) -> str:
        """The keyword under which `base.forward` takes its KV cache."""
        params = inspect.signature(base.forward).parameters
        for name in self.cache_kwargs:
            if name in params:
                return name
        mt = base.config.model_type
        raise ConfigError(f"{type(base).__name__}.forward takes none of {list(self.cache_kwargs)}; "
                          f"add its cache keyword to BASE_ADAPTERS[{mt!r}].cache_kwargs")

    # ---------------------------------------------------------------- embeddings
    def input_scale(self, config) -> float:
        """The factor between an embedding-table row and the first layer's input."""
        return 1.0 if self.embed_scale is None else float(self.embed_scale(config))

    def embed(self, base: nn.Module, ids: torch.Tensor) -> torch.Tensor:
        """Exactly what the base model feeds its first decoder layer for token ids `ids`."""
        x = base.get_input_embeddings()(ids)
        if self.embed_scale is not None and not self.scale_in_embedding:
            x = x * self.embed_scale(base.config)
        return x

    # ---------------------------------------------------------------- layer inputs
    def hidden_states(self, args: tuple, kwargs: dict) -> torch.Tensor:
        """The hidden states in a decoder layer's call."""
        if len(args) > self.hidden_index:
            return args[self.hidden_index]
        return kwargs[self.hidden_name]

    def with_hidden_states(self, args: tuple, kwargs: dict, x: torch.Tensor
                           ) -> tuple[tuple, dict]:
        """The call's (args, kwargs) with the hidden states replaced by `x`."""
        if len(args) > self.hidden_index:
            i = self.hidden_index
            return (*args[:i], x, *args[i + 1:]), kwargs
        return args, {**kwargs, self.hidden_name: x}


_LLAMA_LIKE = BaseAdapter()
_GEMMA = BaseAdapter(embed_scale=_sqrt_hidden, scale_in_embedding=True)

BASE_ADAPTERS: dict[str, BaseAdapter] = {
    "llama": _LLAMA_LIKE,          # Llama 1-3 (rope scaling included), SmolLM2, TinyLlama
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _GEMMA,               # GemmaTextScaledWordEmbedding multiplies by sqrt(hidden_size)
    "gemma2": _GEMMA,
    "gemma3_text": _GEMMA,         # Gemma 3 text-only causal LM (Gemma3ForCausalLM)
    "phi3": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
    "granite": BaseAdapter(embed_scale=_embedding_multiplier),   # GraniteModel.forward scales
    "starcoder2": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "olmo3": _LLAMA_LIKE,
    "cohere": _LLAMA_LIKE,
    "glm": _LLAMA_LIKE,
    "glm4": _LLAMA_LIKE,
    "helium": _LLAMA_LIKE,
}


def supported_families() -> str:
    """The supported `model_type`s, comma-separated."""
    return ", ".join(sorted(BASE_ADAPTERS))


def adapter_for_type(model_type) -> BaseAdapter:
    """The adapter of a `model_type`; ConfigError naming the supported families otherwise."""
    adapter = BASE_ADAPTERS.get(model_type)
    if adapter is None:
        raise ConfigError(f"base model type {model_type!r} is not supported; LCIRC wraps causal "
                          f"LMs of the families {supported_families()} (to add one, add its "
                          f"entry to lcirc_fast.models.base_adapter.BASE_ADAPTERS)")
    return adapter


def resolve_adapter(base: nn.Module) -> BaseAdapter:
    """The checked adapter of a Hugging Face causal LM.

    TypeError when `base` is not a Hugging Face model at all; ConfigError when its family is
    not supported or its layout is not the family's.
    """
    model_type = getattr(getattr(base, "config", None), "model_type", None)
    if not isinstance(base, nn.Module) or model_type is None:
        raise TypeError(f"LCIRCForCausalLM wraps a Llama-style Hugging Face causal LM of the "
                        f"families {supported_families()}; got {type(base).__name__}")
    adapter = adapter_for_type(model_type)
    adapter.check(base)
    return adapter
