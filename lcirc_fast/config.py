"""LCIRC configuration.

`LCIRCConfig` holds the compressor / injection hyper-parameters. Fields left as ``None`` are
filled from the base model's config by :meth:`LCIRCConfig.resolve`, which returns a copy in
which every field is concrete.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

BACKENDS = ("auto", "torch", "triton", "cuda")  # "auto" + the records of lcirc_fast.ops.registry (checked there)
_REQUIRED_POSITIVE = ("num_latents", "compressor_layers", "max_segment_len",
                      "kv_hoist_max_segments")
_OPTIONAL_POSITIVE = ("compressor_heads", "compressor_head_dim", "compressor_ffn", "segment_len",
                      "gca_heads", "gca_head_dim", "gca_ffn", "mixer_heads", "mixer_head_dim",
                      "mixer_ffn", "memory_cap", "hidden_size", "num_hidden_layers", "vocab_size")
MIXER_SIZES = ("mixer_heads", "mixer_head_dim", "mixer_ffn")
RUNTIME_FIELDS = ("backend", "allow_tf32", "kv_hoist_max_segments", "kv_hoist_budget_bytes",
                  "cuda_graphs")   # how the model runs, not what it computes


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(name: str, value, minimum: int, optional: bool) -> None:
    """Refuse bools, non-integers and values below `minimum` (None only when `optional`)."""
    if value is None and optional:
        return
    if not _is_int(value) or value < minimum:
        want = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        if optional:
            want += " (or None for the default)"
        raise ConfigError(f"LCIRCConfig.{name} must be {want}, got {value!r}")


def _known(owner: str, cls, data: dict) -> dict:
    """`data` when every key names a field of the dataclass `cls`, else ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"an {owner} must be a mapping of field names to values, got "
                          f"{type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {owner} fields: {unknown}; known fields: {sorted(known)}")
    return data


def default_gca_layers(num_layers: int) -> list[int]:
    """The paper's placement scaled to any depth: every third layer from 0, plus the last.

    For 32 layers this is [0, 3, ..., 30, 31] (12 blocks), the Llama-2-7B setting.
    """
    if num_layers < 1:
        raise ConfigError(f"num_layers must be >= 1, got {num_layers}")
    layers = list(range(0, num_layers, 3))
    if layers[-1] != num_layers - 1:
        layers.append(num_layers - 1)
    return layers


def _check_number(owner: str, name: str, value, positive: bool) -> None:
    """A finite real number (> 0 when `positive`), or None."""
    if value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or (positive and not value > 0)):
        want = "a finite number > 0" if positive else "a finite number"
        raise ConfigError(f"{owner}.{name} must be {want} (or None to leave the default), got "
                          f"{value!r}")


@dataclass
class InitRecipe:
    """How the trainable parts start, beyond their modules' default initialisation.

    Applied by `lcirc_fast.models.init_recipe.apply_init` when a model is built (the saved
    weights of `from_pretrained` / an official import then replace the result).

    Attributes:
        pos_emb_std: re-draw the compressor's position table N(0, std) (None: N(0, 1)).
        latents_std: re-draw h0 N(0, std) (None: N(0, 1)).
        attn_gate_init: initial GCA attention gate value (None: 0, the base model exactly).
        compressor_q_init_scale: multiply the Perceiver layers' query weights (sharper attention).
        gca_q_init_scale: multiply the GCA blocks' query weights.
        center_positions: subtract the mean compressor input over the training documents from the
            position table (data-dependent: applied by `center_positions` once documents exist).
    """

    pos_emb_std: float | None = None
    latents_std: float | None = None
    attn_gate_init: float | None = None
    compressor_q_init_scale: float | None = None
    gca_q_init_scale: float | None = None
    center_positions: bool = False

    def __post_init__(self) -> None:
        for name in ("pos_emb_std", "latents_std", "compressor_q_init_scale", "gca_q_init_scale"):
            _check_number("InitRecipe", name, getattr(self, name), positive=True)
        _check_number("InitRecipe", "attn_gate_init", self.attn_gate_init, positive=False)
        if not isinstance(self.center_positions, bool):
            raise ConfigError(f"InitRecipe.center_positions must be true or false, got "
                              f"{self.center_positions!r}")
        for name in ("pos_emb_std", "latents_std", "attn_gate_init", "compressor_q_init_scale",
                     "gca_q_init_scale"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, float(value))

    @property
    def is_default(self) -> bool:
        return self == InitRecipe()


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
        gca_heads / gca_head_dim / gca_ffn: GCA block sizes; default to the base model's.
        mixer_heads / mixer_head_dim / mixer_ffn: QD mixer sizes; default to the compressor's
            (as in the reference code, where the mixer is built like the Perceiver layers).
        query_dependent: build the QD-LCIRC query mixer.
        memory_cap: keep only the newest `memory_cap` memory vectors (None: keep all).
        norm_eps: LayerNorm epsilon of the compressor and GCA blocks.
        backend: "auto" | "torch" | "triton" | "cuda" (see `lcirc_fast.backend`): resolved once
            when the model is built (`LCIRCForCausalLM.configure(backend=...)` changes it).
        init: the `InitRecipe` applied when the model is built.
        allow_tf32: fp32 Triton attention on TF32 tensor cores (None: yes unless
            ``TRITON_F32_DEFAULT=ieee``); the torch backend follows torch's own setting.
        kv_hoist_max_segments / kv_hoist_budget_bytes: how many consecutive graph-free compression
            steps share one K/V product (1 disables the batching), within a byte budget counting
            the chunk's embeddings, normalised embeddings and K/V at the model's dtype.
        cuda_graphs: replay graph-free compressor steps from captured CUDA graphs (CUDA only; see
            `lcirc_fast.models.cuda_graph`).
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
    mixer_heads: int | None = None
    mixer_head_dim: int | None = None
    mixer_ffn: int | None = None
    query_dependent: bool = False
    memory_cap: int | None = None
    norm_eps: float = 1e-5
    backend: str = "auto"
    compressor_input_layers: int = 0
    init: InitRecipe = field(default_factory=InitRecipe)
    allow_tf32: bool | None = None
    kv_hoist_max_segments: int = 16
    kv_hoist_budget_bytes: int = 256 << 20
    cuda_graphs: bool = False
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    vocab_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()
        self._normalise()

    # ------------------------------------------------------------------ resolution
    def resolve(self, base_config) -> "LCIRCConfig":
        """Return a copy with every ``None`` filled from a Hugging Face Llama config."""
        d = int(base_config.hidden_size)
        n_layers = int(base_config.num_hidden_layers)
        heads = int(base_config.num_attention_heads)
        head_dim = int(getattr(base_config, "head_dim", None) or d // heads)
        ffn = int(base_config.intermediate_size)
        for name, base_value in (("hidden_size", d), ("num_hidden_layers", n_layers)):
            own = getattr(self, name)
            if own is not None and own != base_value:
                raise ConfigError(f"LCIRCConfig.{name}={own} does not match the base model's "
                                  f"{name}={base_value}; leave it None to copy the base model's")
        pick = lambda value, default: default if value is None else value  # noqa: E731
        c_heads = pick(self.compressor_heads, heads)
        c_head_dim = pick(self.compressor_head_dim, head_dim)
        c_ffn = pick(self.compressor_ffn, ffn)
        out = dataclasses.replace(
            self,
            compressor_heads=c_heads,
            compressor_head_dim=c_head_dim,
            compressor_ffn=c_ffn,
            mixer_heads=pick(self.mixer_heads, c_heads),
            mixer_head_dim=pick(self.mixer_head_dim, c_head_dim),
            mixer_ffn=pick(self.mixer_ffn, c_ffn),
            gca_layers=sorted(pick(self.gca_layers, default_gca_layers(n_layers))),
            segment_len=pick(self.segment_len, min(2048, max(1, self.max_segment_len // 2))),
            gca_heads=pick(self.gca_heads, heads),
            gca_head_dim=pick(self.gca_head_dim, head_dim),
            gca_ffn=pick(self.gca_ffn, ffn),
            hidden_size=d,
            num_hidden_layers=n_layers,
            vocab_size=int(base_config.vocab_size),
            init=dataclasses.replace(self.init),
            extra=dict(self.extra),
        )
        return out

    @property
    def is_resolved(self) -> bool:
        return None not in (self.segment_len, self.compressor_heads, self.compressor_head_dim,
                            self.compressor_ffn,
                            self.gca_layers, self.gca_heads, self.gca_head_dim, self.gca_ffn,
                            self.mixer_heads, self.mixer_head_dim, self.mixer_ffn,
                            self.hidden_size, self.num_hidden_layers, self.vocab_size)

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ConfigError naming the first bad field and its value."""
        for name in _REQUIRED_POSITIVE:
            _check_int(name, getattr(self, name), minimum=1, optional=False)
        for name in _OPTIONAL_POSITIVE:
            _check_int(name, getattr(self, name), minimum=1, optional=True)
        _check_int("compressor_input_layers", self.compressor_input_layers, minimum=0,
                   optional=False)
        _check_int("kv_hoist_budget_bytes", self.kv_hoist_budget_bytes, minimum=0, optional=False)
        self._check_choices()
        self._check_gca_layers()
        self._check_relations()

    def _check_choices(self) -> None:
        if not isinstance(self.query_dependent, bool):
            raise ConfigError(f"LCIRCConfig.query_dependent must be true or false, got "
                              f"{self.query_dependent!r}")
        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise ConfigError(f"LCIRCConfig.backend must be one of {', '.join(BACKENDS)}, got "
                              f"{self.backend!r}")
        eps = self.norm_eps
        if (isinstance(eps, bool) or not isinstance(eps, numbers.Real)
                or not math.isfinite(eps) or not eps > 0):
            raise ConfigError(f"LCIRCConfig.norm_eps must be a finite number > 0, got {eps!r}")
        for name in ("cuda_graphs", "allow_tf32"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "allow_tf32" and value is None):
                raise ConfigError(f"LCIRCConfig.{name} must be true or false"
                                  f"{' (or None: the default)' if name == 'allow_tf32' else ''}, "
                                  f"got {value!r}")
        if isinstance(self.init, dict):
            self.init = InitRecipe(**_known("InitRecipe", InitRecipe, self.init))
        if not isinstance(self.init, InitRecipe):
            raise ConfigError(f"LCIRCConfig.init must be an InitRecipe (or a mapping of its "
                              f"fields), got {self.init!r}")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"LCIRCConfig.extra must be a dict, got {self.extra!r}")

    def _check_gca_layers(self) -> None:
        layers = self.gca_layers
        if layers is None:
            return
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ConfigError(f"LCIRCConfig.gca_layers must be a non-empty list of decoder layer "
                              f"indices (or None for the default placement), got {layers!r}")
        for i in layers:
            if not _is_int(i) or i < 0:
                raise ConfigError(f"LCIRCConfig.gca_layers must hold ints >= 0, got {i!r} in "
                                  f"{layers!r}")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"LCIRCConfig.gca_layers must be distinct, got {list(layers)}")
        if self.num_hidden_layers is not None:
            bad = [i for i in layers if i >= self.num_hidden_layers]
            if bad:
                raise ConfigError(
                    f"LCIRCConfig.gca_layers {bad} out of range for a base model with "
                    f"{self.num_hidden_layers} layers")

    def _check_relations(self) -> None:
        if self.segment_len is not None and self.segment_len > self.max_segment_len:
            raise ConfigError(
                f"LCIRCConfig.segment_len={self.segment_len} exceeds "
                f"max_segment_len={self.max_segment_len}")
        if self.memory_cap is not None and self.memory_cap < self.num_latents:
            raise ConfigError(
                f"LCIRCConfig.memory_cap={self.memory_cap} is smaller than one segment's "
                f"{self.num_latents} latents")
        k = self.compressor_input_layers
        if self.num_hidden_layers is not None and k > self.num_hidden_layers:
            raise ConfigError(f"LCIRCConfig.compressor_input_layers={k} exceeds the base model's "
                              f"{self.num_hidden_layers} layers")

    def _normalise(self) -> None:
        """Plain Python ints / floats / lists (numpy scalars and tuples are accepted)."""
        for name in _REQUIRED_POSITIVE + _OPTIONAL_POSITIVE + ("compressor_input_layers",
                                                               "kv_hoist_budget_bytes"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, int(value))
        self.norm_eps = float(self.norm_eps)
        if self.gca_layers is not None:
            self.gca_layers = [int(i) for i in self.gca_layers]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LCIRCConfig":
        """Build from `to_dict` output; unknown fields are refused."""
        if not isinstance(data, dict):
            raise ConfigError(f"an LCIRCConfig must be a mapping of field names to values, got "
                              f"{type(data).__name__}")
        return cls(**_known("LCIRCConfig", cls, data))

    def with_runtime(self, **knobs) -> "LCIRCConfig":
        """A checked copy with runtime fields (`RUNTIME_FIELDS`) changed."""
        other = sorted(set(knobs) - set(RUNTIME_FIELDS))
        if other:
            raise ConfigError(f"{other} are not runtime settings; runtime settings: "
                              f"{', '.join(RUNTIME_FIELDS)}")
        return dataclasses.replace(self, **knobs)

    def compressor_signature(self) -> dict[str, Any]:
        """Fields that determine what a compressed memory means (used in memory fingerprints)."""
        keys = ("num_latents", "compressor_layers", "compressor_heads", "compressor_head_dim",
                "compressor_ffn", "max_segment_len", "query_dependent", "norm_eps",
                "hidden_size", "vocab_size")
        sig = {k: getattr(self, k) for k in keys}
        if self.compressor_input_layers:   # absent at 0, so embedding-input fingerprints are unchanged
            sig["compressor_input_layers"] = self.compressor_input_layers
        mixer_split = (self.mixer_heads, self.mixer_head_dim)
        if self.query_dependent and mixer_split != (self.compressor_heads, self.compressor_head_dim):
            sig["mixer_heads"], sig["mixer_head_dim"] = mixer_split   # absent when they agree
        return sig
