"""Training configuration (YAML) as nested dataclasses, checked before anything is built.

`load_config` and `config_from_dict` refuse unknown keys, values of the wrong type and values out
of range with a `ConfigError` that names the key path (``train.grad_clip = -1: must be ...``).
Types come from the dataclass annotations; ranges and choices from `FIELD_CHECKS`; the `lcirc:`
section is an `LCIRCConfig`, which checks itself (its errors are reported under ``lcirc.``);
rules that tie several fields together are `config_rules.CROSS_RULES`.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import bptt
from ..config import FieldError, InitRecipe, LCIRCConfig
from ..data.qa import SyntheticQA
from ..data.templates import TEMPLATES
from ..errors import ConfigError
from .config_files import load_yaml_text, read_yaml
from .config_rules import CROSS_RULES
from .config_values import (
    BOOL,
    INT_MAX,
    MAX_TOKENS,
    Bad,
    Check,
    as_float,
    as_int,
    at_least,
    check_value,
    choice,
    convert,
    nonempty,
    positive,
    show,
)

PARAM_GROUPS = ("gca", "gates", "compressor", "mixer")  # optimizer groups (train.lr_mult keys)
DATA_SOURCES = ("kjv", "text_files", "token_files", "qa_files", "hub", "synthetic_tokens")
DTYPES = ("float32", "bfloat16")
SEGMENTING = ("random", "fixed", "balanced")
QA_NEEDLES = ("anywhere", "middle")
ENGINES = ("plain", "deepspeed")
DIST_BACKENDS = ("nccl", "gloo", "mpi", "ccl")
SELF_CHECKED = (LCIRCConfig, InitRecipe)   # sections that validate themselves
TINY_DEFAULTS = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)  # base.tiny entries override these
TINY_SIZES = dict(vocab_size=1 << 22, hidden_size=1 << 16, intermediate_size=1 << 20, num_hidden_layers=1024,
                  num_attention_heads=1024, num_key_value_heads=1024,
                  max_position_embeddings=MAX_TOKENS)   # base.tiny size -> its largest value


@dataclass
class BaseSection:
    name: str = "smollm2"            # smollm2(-135m) | tiny_random | Hugging Face model dir
    dtype: str = "float32"           # float32 | bfloat16
    tiny: dict = field(default_factory=lambda: dict(TINY_DEFAULTS))  # tiny_random: LlamaConfig


@dataclass
class DataSection:
    source: str = "kjv"              # kjv | text_files | token_files | qa_files | hub | synthetic_tokens
    train_path: str | None = None
    val_path: str | None = None
    hub_name: str | None = None
    text_field: str = "text"
    window: int = 4096
    segmenting: str = "random"       # random | fixed | balanced (~lcirc.segment_len, equal lengths)
    segment_min: int = 64
    segment_max: int = 4032
    max_doc_tokens: int | None = None
    qa_context: list = field(default_factory=lambda: [8192, 32768])
    qa_tasks: list = field(default_factory=lambda: ["passkey", "fact", "book"])
    qa_needle: str = "anywhere"      # anywhere | middle: planted needles lie in the compressed middle
    qa_template: str | None = None   # stage 2 synthetic tasks: one template by name (null: random
                                     # open templates in training, read_answer in validation)
    hay_schedule: list | None = None # stage 2 curriculum [[tokens, from_step], ...]: context tokens
                                     # from that optimizer step on (replaces qa_context in training)
    qa_val_lengths: list | None = None  # stage 2 validation context lengths, val_docs samples each
                                        # (null: the qa_context midpoint / the last hay_schedule length)
    val_docs: int = 16
    val_context: int | None = None   # stage-1 validation length (default 4 * window)
    synthetic_docs: int = 32         # synthetic_tokens: number of documents
    synthetic_len: int = 512         # synthetic_tokens: tokens per document
    cache_dir: str | None = None
    repeat_passage: bool = False     # stage 1 copy task: compress a passage, then predict it again
    max_answer_tokens: int | None = None  # stage 2 qa_files / hub: skip longer answers (paper: 500)
    copy_mix: float = 0.0            # stage 1: share of documents trained on the copy task, the
                                     # rest on next-window prediction (validation: next window)


@dataclass
class TrainSection:
    max_steps: int = 1000            # optimizer steps
    grad_accum: int = 8              # backward calls per optimizer step per rank
    batch_size: int = 1              # samples (stage 1: parallel document streams) per backward call
    lr: float = 5e-5
    lr_mult: dict = field(default_factory=dict)  # per group: gca | gates | compressor | mixer
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float | None = 1.0
    bptt: dict = field(default_factory=lambda: {"kind": "truncated", "k": 1})
    contrast_weight: float = 0.0     # + w * relu(margin - (swapped-memory loss - own loss)), in-batch swap
    contrast_margin: float = 1.0
    memory_grad_centering: bool = False  # remove the batch-mean gradient of the memory
    activation_checkpointing: bool = False
    log_every: int = 1
    eval_every: int = 100
    save_every: int = 100
    keep_last: int = 2
    max_minutes: float | None = None


@dataclass
class DistributedSection:
    engine: str = "plain"            # plain | deepspeed
    deepspeed_config: str | None = None
    backend: str | None = None       # gloo | nccl (default: nccl on GPU, gloo on CPU)


@dataclass
class TrainConfig:
    stage: int = 1
    seed: int = 42
    output_dir: str = "runs/lcirc"
    init_from: str | None = None     # LCIRC save_pretrained dir (stage 2 from stage 1)
    base: BaseSection = field(default_factory=BaseSection)
    lcirc: LCIRCConfig = field(default_factory=LCIRCConfig)   # the model's config, every field
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)

    def validate(self) -> "TrainConfig":
        """Check every field (type, range, choices) and the rules between fields; values are
        normalised in place ('1e-3' -> 0.001, 1000.0 -> 1000). Raises ConfigError."""
        for key, owner, name, kind, optional in _leaves(self):
            value = check_value(key, getattr(owner, name), kind, FIELD_CHECKS[key], optional)
            setattr(owner, name, value)
        if not isinstance(self.lcirc, LCIRCConfig):
            raise ConfigError(f"lcirc = {show(self.lcirc)}: must be a section (a mapping of keys)")
        try:
            self.lcirc.validate()
        except ConfigError as e:
            raise _self_checked_error(e, "lcirc") from None
        for rule in CROSS_RULES:
            rule(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- lists and mappings
def _fix_qa_context(value: list, key: str) -> list[int]:
    if len(value) != 2:
        raise Bad
    lo, hi = (as_int(x) for x in value)
    if not 1 <= lo <= hi <= MAX_TOKENS:
        raise Bad
    return [lo, hi]


def _fix_qa_tasks(value: list, key: str) -> list[str]:
    if not value or any(t not in SyntheticQA.TASKS for t in value) or len(set(value)) != len(value):
        raise Bad
    return value


def _fix_hay_schedule(value: list, key: str) -> list[list[int]]:
    if not value:
        raise Bad
    out = []
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ConfigError(f"{where} = {show(entry)}: must be a pair [tokens, from_step]")
        tokens = check_value(f"{where}[0]", entry[0], int, at_least(1, " (context tokens)", most=MAX_TOKENS))
        start = check_value(f"{where}[1]", entry[1], int, at_least(0, " (optimizer step)"))
        if i == 0 and start != 0:
            raise ConfigError(f"{where}[1] = {start}: the first entry must start at step 0")
        if i and start <= out[-1][1]:
            raise ConfigError(f"{where}[1] = {start}: steps must increase (previous entry starts "
                              f"at {out[-1][1]})")
        out.append([tokens, start])
    return out


def _fix_lengths(value: list, key: str) -> list[int]:
    if not value:
        raise Bad
    return [check_value(f"{key}[{i}]", x, int, at_least(1, most=MAX_TOKENS)) for i, x in enumerate(value)]


def _fix_betas(value: list, key: str) -> list[float]:
    if len(value) != 2:
        raise Bad
    betas = [as_float(b) for b in value]
    if not all(0 <= b < 1 for b in betas):
        raise Bad
    return betas


def _fix_lr_mult(value: dict, key: str) -> dict:
    out = {}
    for group, mult in value.items():
        if group not in PARAM_GROUPS:
            raise ConfigError(f"{key}.{group}: unknown optimizer group; groups: {', '.join(PARAM_GROUPS)}")
        out[group] = check_value(f"{key}.{group}", mult, float, positive())
    return out


def _fix_tiny(value: dict, key: str) -> dict:
    value = {**TINY_DEFAULTS, **value}
    for name, most in TINY_SIZES.items():
        if name in value:
            value[name] = check_value(f"{key}.{name}", value[name], int, at_least(1, most=most))
    return value


def check_bptt(spec, key: str = "train.bptt") -> dict:
    """A train.bptt mapping checked and completed with its kind's defaults (`bptt.parse_spec`)."""
    return bptt.parse_spec(spec, key)


FIELD_CHECKS: dict[str, Check] = {
    "stage": Check("1 (language modelling) or 2 (question answering)", lambda v: v in (1, 2)),
    "seed": Check(f"an integer in [0, {INT_MAX}]", lambda v: 0 <= v <= INT_MAX),
    "output_dir": nonempty("a non-empty path"),
    "init_from": nonempty("a save_pretrained directory", null="a fresh LCIRC model"),
    "base.name": nonempty("smollm2-135m, tiny_random or a Hugging Face model directory"),
    "base.dtype": choice(DTYPES),
    "base.tiny": Check("a mapping of LlamaConfig arguments (over the tiny defaults)", fix=_fix_tiny),
    "data.source": choice(DATA_SOURCES),
    "data.train_path": nonempty("a non-empty path", null="none"),
    "data.val_path": nonempty("a non-empty path", null="none"),
    "data.hub_name": nonempty("a dataset name", null="none"),
    "data.text_field": nonempty("a non-empty field name"),
    "data.window": at_least(8, most=MAX_TOKENS),
    "data.segmenting": choice(SEGMENTING),
    "data.segment_min": at_least(1, most=MAX_TOKENS),
    "data.segment_max": at_least(1, most=MAX_TOKENS),
    "data.max_doc_tokens": at_least(2, null="whole documents"),
    "data.max_answer_tokens": at_least(1, null="every answer"),
    "data.qa_context": Check(f"a list [min, max] of context lengths with 1 <= min <= max <= {MAX_TOKENS}",
                             fix=_fix_qa_context),
    "data.qa_tasks": Check("a non-empty list of distinct tasks from " + ", ".join(SyntheticQA.TASKS),
                           fix=_fix_qa_tasks),
    "data.qa_needle": choice(QA_NEEDLES),
    "data.qa_template": choice(tuple(t.name for t in TEMPLATES if not t.multiple_choice),
                                null="random open templates"),
    "data.hay_schedule": Check("a non-empty list of [tokens >= 1, from_step >= 0] pairs, the first "
                               "from step 0, steps increasing", fix=_fix_hay_schedule,
                               null="context lengths drawn from data.qa_context"),
    "data.qa_val_lengths": Check("a non-empty list of context lengths >= 1",
                                 fix=_fix_lengths,
                                 null="one length: the data.qa_context midpoint"),
    "data.val_docs": at_least(1, most=1 << 20),
    "data.val_context": at_least(9, null="4 * data.window", most=MAX_TOKENS),
    "data.synthetic_docs": at_least(1, most=1 << 20),
    "data.synthetic_len": at_least(2, most=MAX_TOKENS),
    "data.cache_dir": nonempty("a non-empty path", null="the default token cache"),
    "data.repeat_passage": BOOL,
    "data.copy_mix": Check("a number in [0, 1] (0: next-window steps only)", lambda v: 0 <= v <= 1),
    "train.max_steps": at_least(1, most=10**9),
    "train.grad_accum": at_least(1, most=1 << 16),
    "train.batch_size": at_least(1, most=1 << 16),
    "train.lr": positive(),
    "train.lr_mult": Check("a mapping from optimizer group (" + ", ".join(PARAM_GROUPS)
                           + ") to a multiplier > 0", fix=_fix_lr_mult),
    "train.warmup_steps": at_least(0),
    "train.min_lr_ratio": Check("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "train.weight_decay": Check("a number >= 0", lambda v: v >= 0),
    "train.betas": Check("a list of two numbers in [0, 1)", fix=_fix_betas),
    "train.grad_clip": positive(null="no clipping"),
    "train.bptt": Check("a mapping such as {kind: truncated, k: 1}", fix=check_bptt),  # settings: bptt.KINDS
    "train.activation_checkpointing": BOOL,
    "train.contrast_weight": Check("a number >= 0 (0: no contrast term)", lambda v: v >= 0),
    "train.contrast_margin": Check("a number >= 0", lambda v: v >= 0),
    "train.memory_grad_centering": BOOL,
    "train.log_every": at_least(0, " (0: no per-step lines)"),
    "train.eval_every": at_least(0, " (0: no validation)"),
    "train.save_every": at_least(0, " (0: save at the end only)"),
    "train.keep_last": at_least(1),
    "train.max_minutes": positive(null="no time limit"),
    "distributed.engine": choice(ENGINES),
    "distributed.deepspeed_config": nonempty("a path to a DeepSpeed JSON file", null="ZeRO stage 0"),
    "distributed.backend": choice(DIST_BACKENDS, null="nccl on GPU, gloo on CPU"),
}


# ---------------------------------------------------------------- structure
def _field_types(cls) -> dict[str, tuple[type, bool]]:
    """name -> (type, optional) from the annotations of a config dataclass."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
        if optional:
            (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = (typing.get_origin(hint) or hint, optional)
    return out


def _leaves(obj, where: str = ""):
    """(key path, owner, name, type, optional) of every field of the sections checked here (not
    the self-checked `lcirc:`), depth first."""
    for name, (kind, optional) in _field_types(type(obj)).items():
        key = f"{where}.{name}" if where else name
        if kind in SELF_CHECKED:
            continue
        if dataclasses.is_dataclass(kind):
            yield from _leaves(getattr(obj, name), key)
        else:
            yield key, obj, name, kind, optional


def _unknown_key(name, known, where: str) -> str:
    key = f"{where}.{name}" if where else str(name)
    close = difflib.get_close_matches(str(name), list(known), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{key}: unknown key in {where or 'the top level'}; {hint}known keys: {', '.join(known)}"


def _self_checked_error(e: ConfigError, where: str) -> ConfigError:
    """An LCIRCConfig / InitRecipe error named by its key path (lcirc., lcirc.init.), YAML spelling."""
    if isinstance(e, FieldError):
        path = f"{where}.init" if e.owner == "InitRecipe" and not where.endswith(".init") else where
        return ConfigError(f"{path}.{e.field} = {show(e.value)}: must be {e.requirement('null')}")
    return ConfigError(str(e).replace("LCIRCConfig.", f"{where}.").replace("InitRecipe.", f"{where}.init."))


def _build(cls, data: dict, where: str = ""):
    fields = _field_types(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(_unknown_key(unknown[0], fields, where))
    kwargs = {}
    for name, value in data.items():
        kind, optional = fields[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(kind):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{key} = {show(value)}: must be a section (a mapping of keys)")
            value = _build(kind, value, key)
        elif cls in SELF_CHECKED:       # YAML spellings only: the section checks the values
            value = convert(kind, value)
        elif key in FIELD_CHECKS:       # converted before the section's own rules see it
            value = check_value(key, value, kind, FIELD_CHECKS[key], optional)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise _self_checked_error(e, where) from None


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """A checked TrainConfig from nested mappings (as read from YAML); ConfigError if bad."""
    if not isinstance(data, dict):
        raise ConfigError(f"a training config must be a mapping of keys, got {type(data).__name__}")
    return _build(TrainConfig, data).validate()


# ---------------------------------------------------------------- YAML and --set
def _override_path(key: str, item: str) -> list[str]:
    """The key path of `--set key=...`; a key of one section may omit it (grad_accum)."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {item}: {key!r} is not a key path such as train.max_steps")
    top = _field_types(TrainConfig)
    if parts[0] in top:
        return parts
    owners = [s for s, (kind, _) in top.items() if dataclasses.is_dataclass(kind)
              and parts[0] in _field_types(kind)]
    if len(owners) == 1:
        return [owners[0], *parts]
    if owners:
        raise ConfigError(f"--set {item}: {parts[0]} is in sections {' and '.join(owners)}; write "
                          + " or ".join(f"{s}.{key}" for s in owners))
    raise ConfigError(f"--set {item}: unknown key {parts[0]!r}; use section.key (sections "
                      f"and top-level keys: {', '.join(top)})")


def apply_override(data: dict, item: str) -> None:
    """Set `item` ("key=value", the value read as YAML) in the nested mapping `data`."""
    if "=" not in item:
        raise ConfigError(f"--set {item}: must look like key=value, e.g. train.max_steps=10")
    key, text = item.split("=", 1)
    parts = _override_path(key.strip(), item)
    try:
        value = load_yaml_text(text, "the value")
    except ConfigError as e:
        raise ConfigError(f"--set {item}: {e}") from None
    node = data
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item}: {'.'.join(parts[:i + 1])} is a value, not a section")
    node[parts[-1]] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply `overrides` ("key=value", value read as YAML) and check it all."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory; pass a YAML file (see train/configs/)")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    data = read_yaml(path)
    for item in overrides or []:
        apply_override(data, item)
    return config_from_dict(data)
