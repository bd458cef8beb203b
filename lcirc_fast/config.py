"""LCIRC configuration.

`LCIRCConfig` holds the compressor / injection hyper-parameters. Fields left as ``None`` are
filled from the base model's config by :meth:`LCIRCConfig.resolve`, which returns a copy in
which every field is concrete.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

BACKENDS = ("auto", "torch", "triton")


def default_gca_layers(num_layers: int) -> list[int]:
    """The paper's placement scaled to any depth: every third layer from 0, plus the last.

    For 32 layers this is [0, 3, ..., 30, 31] (12 blocks), the Llama-2-7B setting.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    layers = list(range(0, num_layers, 3))
    if layers[-1] != num_layers - 1:
        layers.append(num_layers - 1)
    return layers


@dataclass
class LCIRCConfig:
    """Hyper-parameters of LCIRC / QD-LCIRC.

    Attributes:
        num_latents: K, compressed vectors per segment (paper: 64).
        compressor_layers: Perceiver layers (paper: 4).
        compressor_heads / compressor_head_dim / compressor_ffn: default to the base model's
            attention heads, head dim and MLP size.
        max_segment_len: rows of the learnable position table; the longest segment allowed.
        segment_len: base length of the default ("~2K") segmenting rule; defaults to
            min(2048, max_segment_len // 2) so every balanced segment fits the position table.
        gca_layers: decoder layers that get a gated cross-attention block in front of them.
        gca_heads / gca_head_dim / gca_ffn: GCA (and QD mixer) sizes; default to the base model's.
        query_dependent: build the QD-LCIRC query mixer.
        memory_cap: keep only the newest `memory_cap` memory vectors (None: keep all).
        norm_eps: LayerNorm epsilon of the compressor and GCA blocks.
        backend: "auto" | "torch" | "triton" (see `lcirc_fast.backend`).
        compressor_input_layers: what the Perceiver reads. 0 (the paper): the frozen token
            embeddings. k > 0: the frozen LLM's hidden states after its first k decoder layers,
            run on each segment alone, so every token carries its in-segment context (the
            order of a number's digits, say), which order-blind embeddings + positions do not.
        hidden_size / num_hidden_layers / vocab_size: copied from the base model by `resolve`.
    """

    num_latents: int = 64
    compressor_layers: int = 4
    compressor_heads: int | None = None
    compressor_head_dim: int | None = None
    compressor_ffn: int | None = None
    max_segment_len: int = 4096
    segment_len: int | None = None
    gca_layers: list[int] | None = None
    gca_heads: int | None = None
    gca_head_dim: int | None = None
    gca_ffn: int | None = None
    query_dependent: bool = False
    memory_cap: int | None = None
    norm_eps: float = 1e-5
    backend: str = "auto"
    compressor_input_layers: int = 0
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    vocab_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ resolution
    def resolve(self, base_config) -> "LCIRCConfig":
        """Return a copy with every ``None`` filled from a Hugging Face Llama config."""
        d = int(base_config.hidden_size)
        n_layers = int(base_config.num_hidden_layers)
        heads = int(base_config.num_attention_heads)
        head_dim = int(getattr(base_config, "head_dim", None) or d // heads)
        ffn = int(base_config.intermediate_size)
        if self.hidden_size is not None and self.hidden_size != d:
            raise ValueError(
                f"LCIRCConfig.hidden_size={self.hidden_size} does not match the base model's "
                f"hidden_size={d}")
        if self.num_hidden_layers is not None and self.num_hidden_layers != n_layers:
            raise ValueError(
                f"LCIRCConfig.num_hidden_layers={self.num_hidden_layers} does not match the base "
                f"model's num_hidden_layers={n_layers}")
        out = dataclasses.replace(
            self,
            compressor_heads=self.compressor_heads or heads,
            compressor_head_dim=self.compressor_head_dim or head_dim,
            compressor_ffn=self.compressor_ffn or ffn,
            gca_layers=sorted(self.gca_layers) if self.gca_layers is not None
            else default_gca_layers(n_layers),
            segment_len=self.segment_len or min(2048, max(1, self.max_segment_len // 2)),
            gca_heads=self.gca_heads or heads,
            gca_head_dim=self.gca_head_dim or head_dim,
            gca_ffn=self.gca_ffn or ffn,
            hidden_size=d,
            num_hidden_layers=n_layers,
            vocab_size=int(base_config.vocab_size),
            extra=dict(self.extra),
        )
        out.validate()
        return out

    @property
    def is_resolved(self) -> bool:
        return None not in (self.segment_len, self.compressor_heads, self.compressor_head_dim,
                            self.compressor_ffn,
                            self.gca_layers, self.gca_heads, self.gca_head_dim, self.gca_ffn,
                            self.hidden_size, self.num_hidden_layers, self.vocab_size)

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        def positive(name):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"LCIRCConfig.{name} must be a positive int, got {v!r}")

        for name in ("num_latents", "compressor_layers", "compressor_heads", "compressor_head_dim",
                     "compressor_ffn", "max_segment_len", "segment_len", "gca_heads",
                     "gca_head_dim", "gca_ffn", "memory_cap", "hidden_size",
                     "num_hidden_layers", "vocab_size"):
            positive(name)
        if self.backend not in BACKENDS:
            raise ValueError(f"LCIRCConfig.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.segment_len is not None and self.segment_len > self.max_segment_len:
            raise ValueError(
                f"LCIRCConfig.segment_len={self.segment_len} exceeds "
                f"max_segment_len={self.max_segment_len}")
        if self.memory_cap is not None and self.memory_cap < self.num_latents:
            raise ValueError(
                f"LCIRCConfig.memory_cap={self.memory_cap} is smaller than one segment's "
                f"{self.num_latents} latents")
        if self.gca_layers is not None:
            if len(set(self.gca_layers)) != len(self.gca_layers) or not self.gca_layers:
                raise ValueError(f"LCIRCConfig.gca_layers must be distinct and non-empty, "
                                 f"got {self.gca_layers}")
            if self.num_hidden_layers is not None:
                bad = [i for i in self.gca_layers if not 0 <= i < self.num_hidden_layers]
                if bad:
                    raise ValueError(
                        f"LCIRCConfig.gca_layers {bad} out of range for a base model with "
                        f"{self.num_hidden_layers} layers")
        k = self.compressor_input_layers
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"LCIRCConfig.compressor_input_layers must be an int >= 0, got {k!r}")
        if self.num_hidden_layers is not None and k > self.num_hidden_layers:
            raise ValueError(f"LCIRCConfig.compressor_input_layers={k} exceeds the base model's "
                             f"{self.num_hidden_layers} layers")
        if not self.norm_eps > 0:
            raise ValueError(f"LCIRCConfig.norm_eps must be > 0, got {self.norm_eps}")

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LCIRCConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown LCIRCConfig fields: {unknown}")
        return cls(**data)

    def compressor_signature(self) -> dict[str, Any]:
        """Fields that determine what a compressed memory means (used in memory fingerprints)."""
        keys = ("num_latents", "compressor_layers", "compressor_heads", "compressor_head_dim",
                "compressor_ffn", "max_segment_len", "query_dependent", "norm_eps",
                "hidden_size", "vocab_size")
        sig = {k: getattr(self, k) for k in keys}
        if self.compressor_input_layers:   # absent at 0, so embedding-input fingerprints are unchanged
            sig["compressor_input_layers"] = self.compressor_input_layers
        return sig
