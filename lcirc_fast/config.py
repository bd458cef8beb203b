"""LCIRC configuration.

`LCIRCConfig` holds the compressor / injection hyper-parameters and is their one validator: a
bad field raises `FieldError` ("LCIRCConfig.<field> = <value>: must be ..."), a bad combination
a `ConfigError` naming both fields. Fields left as ``None`` are filled from the base model's config
by :meth:`LCIRCConfig.resolve`, which returns a copy in which every field is concrete.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

BACKENDS = ("auto", "torch", "triton", "cuda")  # "auto" + the records of lcirc_fast.ops.registry (checked there)
AUTOCAST_DTYPES = (None, "bfloat16")   # compressor_input_autocast: exact, or the contextual pass under autocast
MIXER_SIZES = ("mixer_heads", "mixer_head_dim", "mixer_ffn")
RUNTIME_FIELDS = ("backend", "allow_tf32", "kv_hoist_max_segments", "kv_hoist_budget_bytes",
                  "cuda_graphs")   # how the model runs, not what it computes


class FieldError(ConfigError):
    """One field of a config dataclass with a value that does not fit.

    Attributes: owner (class name), field, value, need (read as "must be <need>"), null (what
    None means, for a field that may be None; "" otherwise). `str(err)` is
    "<owner>.<field> = <value>: must be <need>" (plus "or None (<null>)").
    """

    def __init__(self, owner: str, name: str, value: Any, need: str, null: str = ""):
        self.owner, self.field, self.value, self.need, self.null = owner, name, value, need, null
        super().__init__(f"{owner}.{name} = {value!r}: must be {self.requirement('None')}")

    def requirement(self, none_word: str) -> str:
        """The requirement, with None spelled `none_word` (YAML: null)."""
        return f"{self.need} or {none_word} ({self.null})" if self.null else self.need


@dataclass(frozen=True)
class Size:
    """An integer field in [lo, hi]; `null`: what None means (fields that may be None)."""

    lo: int
    hi: int
    null: str = ""
    note: str = ""

    def check(self, owner: str, name: str, value) -> None:
        if value is None and self.null:
            return
        if not _is_int(value) or value < self.lo:
            raise FieldError(owner, name, value, f"an integer >= {self.lo}{self.note}", self.null)
        if value > self.hi:
            raise FieldError(owner, name, value, f"at most {self.hi}")


_HEADS, _HEAD_DIM, _FFN = 1024, 4096, 1 << 20
SIZES: dict[str, Size] = {   # every integer field of LCIRCConfig and its range
    "num_latents": Size(1, 4096),
    "compressor_layers": Size(1, 256),
    "compressor_heads": Size(1, _HEADS, "the base model's attention heads"),
    "compressor_head_dim": Size(1, _HEAD_DIM, "the base model's head dim"),
    "compressor_ffn": Size(1, _FFN, "the base model's MLP size"),
    "max_segment_len": Size(1, 1 << 17),
    "segment_len": Size(1, 1 << 17, "min(2048, max_segment_len // 2)"),
    "gca_heads": Size(1, _HEADS, "the base model's attention heads"),
    "gca_head_dim": Size(1, _HEAD_DIM, "the base model's head dim"),
    "gca_ffn": Size(1, _FFN, "the base model's MLP size"),
    "mixer_heads": Size(1, _HEADS, "compressor_heads"),
    "mixer_head_dim": Size(1, _HEAD_DIM, "compressor_head_dim"),
    "mixer_ffn": Size(1, _FFN, "compressor_ffn"),
    "memory_cap": Size(1, 1 << 24, "keep every memory vector"),
    "compressor_input_layers": Size(0, 1024, note=" (0: token embeddings)"),
    "kv_hoist_max_segments": Size(1, 4096, note=" (1: no batched K/V products)"),
    "kv_hoist_budget_bytes": Size(0, 1 << 40),
    "hidden_size": Size(1, 1 << 16, "the base model's"),
    "num_hidden_layers": Size(1, 1024, "the base model's"),
    "vocab_size": Size(1, 1 << 22, "the base model's"),
}
MAX_LAYER_INDEX = SIZES["num_hidden_layers"].hi - 1


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, numbers.Real)
            and math.isfinite(value))


def _check_flag(owner: str, name: str, value, null: str = "") -> None:
    if not isinstance(value, bool) and not (null and value is None):
        raise FieldError(owner, name, value, "true or false", null)


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


_INIT_NUMBERS = {  # InitRecipe field -> (must be > 0, what None means)
    "pos_emb_std": (True, "N(0, 1)"),
    "latents_std": (True, "N(0, 1)"),
    "attn_gate_init": (False, "0: the base model exactly"),
    "compressor_q_init_scale": (True, "unscaled"),
    "gca_q_init_scale": (True, "unscaled"),
}


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
        for name, (positive, null) in _INIT_NUMBERS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if not _is_number(value) or (positive and not value > 0):
                raise FieldError("InitRecipe", name, value,
                                 "a positive number" if positive else "a number", null)
            setattr(self, name, float(value))
        _check_flag("InitRecipe", "center_positions", self.center_positions)


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
        compressor_input_autocast: None (exact, the base model's dtype) or "bfloat16": the
            contextual pass of `compressor_input_layers` runs under `torch.autocast` at
            bfloat16 (its products in bfloat16: 0.6% relative error in the normalised input and
            1.73x faster on a 2-core avx512_bf16 CPU, docs/perf/contextual-input.md; slower on
            CPUs without bfloat16 instructions). Part of the memory fingerprint.
        hidden_size / num_hidden_layers / vocab_size: copied from the base model by `resolve`.
    Every integer field has the range of `SIZES`.
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
    compressor_input_autocast: str | None = None
    init: InitRecipe = field(default_factory=InitRecipe)
    allow_tf32: bool | None = None
    kv_hoist_max_segments: int = 16
    kv_hoist_budget_bytes: int = 256 << 20
    cuda_graphs: bool = False
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    vocab_size: int | None = None

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
        """Raise FieldError naming the first bad field and its value, or ConfigError naming two
        fields that do not fit together."""
        for name, size in SIZES.items():
            size.check("LCIRCConfig", name, getattr(self, name))
        self._check_choices()
        self._check_gca_layers()
        self._check_relations()

    def _check_choices(self) -> None:
        _check_flag("LCIRCConfig", "query_dependent", self.query_dependent)
        if not isinstance(self.backend, str) or self.backend not in BACKENDS:
            raise FieldError("LCIRCConfig", "backend", self.backend, f"one of {', '.join(BACKENDS)}")
        if not _is_number(self.norm_eps) or not self.norm_eps > 0:
            raise FieldError("LCIRCConfig", "norm_eps", self.norm_eps, "a positive number")
        _check_flag("LCIRCConfig", "cuda_graphs", self.cuda_graphs)
        _check_flag("LCIRCConfig", "allow_tf32", self.allow_tf32,
                    null="TF32 unless TRITON_F32_DEFAULT=ieee")
        if self.compressor_input_autocast not in AUTOCAST_DTYPES:
            raise FieldError("LCIRCConfig", "compressor_input_autocast", self.compressor_input_autocast,
                             " or ".join(d for d in AUTOCAST_DTYPES if d), "exact, no autocast")
        if isinstance(self.init, dict):
            self.init = InitRecipe(**_known("InitRecipe", InitRecipe, self.init))
        if not isinstance(self.init, InitRecipe):
            raise FieldError("LCIRCConfig", "init", self.init,
                             "an InitRecipe (or a mapping of its fields)")

    def _check_gca_layers(self) -> None:
        layers = self.gca_layers
        if layers is None:
            return
        if (not isinstance(layers, (list, tuple)) or not layers
                or not all(_is_int(i) and 0 <= i <= MAX_LAYER_INDEX for i in layers)
                or len(set(layers)) != len(layers)):
            raise FieldError("LCIRCConfig", "gca_layers", layers,
                             f"a non-empty list of distinct decoder layer indices >= 0 (and <= "
                             f"{MAX_LAYER_INDEX})", "every third layer and the last")
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
        if self.compressor_input_autocast is not None and k == 0:
            raise ConfigError(f"LCIRCConfig.compressor_input_autocast="
                              f"{self.compressor_input_autocast!r} applies to the contextual input "
                              f"only: set compressor_input_layers > 0 or drop it")
        if self.num_hidden_layers is not None and k > self.num_hidden_layers:
            raise ConfigError(f"LCIRCConfig.compressor_input_layers={k} exceeds the base model's "
                              f"{self.num_hidden_layers} layers")

    def _normalise(self) -> None:
        """Plain Python ints / floats / lists (numpy scalars and tuples are accepted)."""
        for name in SIZES:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, int(value))
        self.norm_eps = float(self.norm_eps)
        if self.gca_layers is not None:
            self.gca_layers = [int(i) for i in self.gca_layers]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LCIRCConfig":
        """Build from `to_dict` output; unknown fields are refused (an empty `extra` mapping,
        a field that earlier versions wrote and never read, is dropped)."""
        if not isinstance(data, dict):
            raise ConfigError(f"an LCIRCConfig must be a mapping of field names to values, got "
                              f"{type(data).__name__}")
        if "extra" in data and data["extra"] in ({}, None):
            data = {k: v for k, v in data.items() if k != "extra"}
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
        if self.compressor_input_autocast is not None:   # likewise absent when exact
            sig["compressor_input_autocast"] = self.compressor_input_autocast
        mixer_split = (self.mixer_heads, self.mixer_head_dim)
        if self.query_dependent and mixer_split != (self.compressor_heads, self.compressor_head_dim):
            sig["mixer_heads"], sig["mixer_head_dim"] = mixer_split   # absent when they agree
        return sig
