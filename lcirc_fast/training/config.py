"""Training configuration (YAML) as nested dataclasses, checked before anything is built.

`load_config` and `config_from_dict` refuse unknown keys, values of the wrong type and values out
of range with a `ConfigError` that names the key path (``train.grad_clip = -1: must be ...``).
Types come from the dataclass annotations; ranges and choices from `FIELD_CHECKS`; rules that
tie several fields together from `TrainConfig.validate`.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import BACKENDS, LCIRCConfig
from ..data.qa import SyntheticQA
from ..data.templates import TEMPLATES
from ..errors import ConfigError

PARAM_GROUPS = ("gca", "gates", "compressor", "mixer")  # optimizer groups (train.lr_mult keys)
DATA_SOURCES = ("kjv", "text_files", "token_files", "qa_files", "hub", "synthetic_tokens")
STAGE_SOURCES = {1: ("kjv", "text_files", "token_files", "hub", "synthetic_tokens"),
                 2: ("kjv", "qa_files", "hub", "synthetic_tokens")}
DTYPES = ("float32", "bfloat16")
SEGMENTING = ("random", "fixed", "balanced")
QA_NEEDLES = ("anywhere", "middle")
ENGINES = ("plain", "deepspeed")
DIST_BACKENDS = ("nccl", "gloo", "mpi", "ccl")
TINY_DEFAULTS = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)  # base.tiny entries override these
TINY_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
              "num_attention_heads", "num_key_value_heads", "max_position_embeddings")


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
        for rule in CROSS_RULES:
            rule(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- single values
class _Bad(Exception):
    """A value that does not fit; the caller reports the key path and the requirement."""


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _show(value) -> str:
    """A value as YAML spells it (null, true / false), strings quoted."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _as_float(value) -> float:
    """A finite number; text such as '1e-3' (a string to YAML 1.1, which wants a dot) counts."""
    if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad
    try:
        number = float(value)
    except OverflowError:
        raise _Bad from None
    if not math.isfinite(number):
        raise _Bad
    return number


def _as_int(value) -> int:
    """An integer; 1000.0 and '1e3' give 1000, bools and numbers with a fraction are refused."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _as_float(value)
    if not number.is_integer():
        raise _Bad
    return int(number)


def _of_type(*kinds: type) -> Callable[[Any], Any]:
    """A converter that accepts instances of `kinds` (as the first of them) and nothing else."""
    def convert(value):
        if isinstance(value, kinds):
            return kinds[0](value)
        raise _Bad
    return convert


_CONVERT = {int: _as_int, float: _as_float, bool: _of_type(bool), str: _of_type(str),
            list: _of_type(list, tuple), dict: _of_type(dict)}


@dataclass(frozen=True)
class Check:
    """What a good value of one field is.

    need: the requirement, read as "must be <need>"; test: a predicate on the converted value;
    fix: (value, key) -> value, for lists and mappings (raises _Bad, or a ConfigError naming an
    entry); null: what null means, for fields annotated ``X | None``.
    """
    need: str
    test: Callable[[Any], bool] | None = None
    fix: Callable[[Any, str], Any] | None = None
    null: str = ""

    def requirement(self, optional: bool) -> str:
        text = f"must be {self.need}"
        if optional:
            text += f" or null ({self.null})" if self.null else " or null"
        return text


def check_value(key: str, value, kind: type, check: Check, optional: bool = False):
    """`value` converted to `kind` and checked, or a ConfigError "key = value: must be ..."."""
    if value is None and optional:
        return None
    try:
        if value is None:
            raise _Bad
        out = _CONVERT[kind](value)
        if check.test is not None and not check.test(out):
            raise _Bad
        if check.fix is not None:
            out = check.fix(out, key)
    except _Bad:
        raise ConfigError(f"{key} = {_show(value)}: {check.requirement(optional)}") from None
    return out


def _at_least(lo: int, note: str = "", null: str = "") -> Check:
    return Check(f"an integer >= {lo}{note}", lambda v: v >= lo, null=null)


def _positive(null: str = "") -> Check:
    return Check("a positive number", lambda v: v > 0, null=null)


def _choice(options, null: str = "") -> Check:
    return Check("one of " + ", ".join(map(str, options)), lambda v: v in options, null=null)


def _text(need: str, null: str = "") -> Check:
    return Check(need, lambda v: bool(v.strip()), null=null)


BOOL = Check("true or false")


# ---------------------------------------------------------------- lists and mappings
def _fix_gca_layers(value: list, key: str) -> list[int]:
    layers = [_as_int(x) for x in value]
    if not layers or min(layers) < 0 or len(set(layers)) != len(layers):
        raise _Bad
    return layers


def _fix_qa_context(value: list, key: str) -> list[int]:
    if len(value) != 2:
        raise _Bad
    lo, hi = (_as_int(x) for x in value)
    if not 1 <= lo <= hi:
        raise _Bad
    return [lo, hi]


def _fix_qa_tasks(value: list, key: str) -> list[str]:
    if not value or any(t not in SyntheticQA.TASKS for t in value) or len(set(value)) != len(value):
        raise _Bad
    return value


def _fix_hay_schedule(value: list, key: str) -> list[list[int]]:
    if not value:
        raise _Bad
    out = []
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise ConfigError(f"{where} = {_show(entry)}: must be a pair [tokens, from_step]")
        tokens = check_value(f"{where}[0]", entry[0], int, _at_least(1, " (context tokens)"))
        start = check_value(f"{where}[1]", entry[1], int, _at_least(0, " (optimizer step)"))
        if i == 0 and start != 0:
            raise ConfigError(f"{where}[1] = {start}: the first entry must start at step 0")
        if i and start <= out[-1][1]:
            raise ConfigError(f"{where}[1] = {start}: steps must increase (previous entry starts "
                              f"at {out[-1][1]})")
        out.append([tokens, start])
    return out


def _fix_lengths(value: list, key: str) -> list[int]:
    if not value:
        raise _Bad
    return [check_value(f"{key}[{i}]", x, int, _at_least(1)) for i, x in enumerate(value)]


def _fix_betas(value: list, key: str) -> list[float]:
    if len(value) != 2:
        raise _Bad
    betas = [_as_float(b) for b in value]
    if not all(0 <= b < 1 for b in betas):
        raise _Bad
    return betas


def _fix_lr_mult(value: dict, key: str) -> dict:
    out = {}
    for group, mult in value.items():
        if group not in PARAM_GROUPS:
            raise ConfigError(f"{key}.{group}: unknown optimizer group; groups: {', '.join(PARAM_GROUPS)}")
        out[group] = check_value(f"{key}.{group}", mult, float, _positive())
    return out


def _fix_tiny(value: dict, key: str) -> dict:
    value = {**TINY_DEFAULTS, **value}
    for name in TINY_SIZES:
        if name in value:
            value[name] = check_value(f"{key}.{name}", value[name], int, _at_least(1))
    return value


BPTT_FIELDS = {  # kind -> {setting: (type, check, default)}; see builders.bptt_policy
    "truncated": {"k": (int, _at_least(1, " (steps that keep their graph)"), 1)},
    "selective": {"n": (int, _at_least(1, " (steps selected for gradient)"), 8),
                  "replace": (bool, BOOL, False), "full_when_short": (bool, BOOL, False)},
    "full": {},
}


def check_bptt(spec, key: str = "train.bptt") -> dict:
    """A train.bptt mapping checked and completed with its kind's defaults; ConfigError if bad."""
    kinds = ", ".join(BPTT_FIELDS)
    if not isinstance(spec, dict):
        raise ConfigError(f"{key} = {_show(spec)}: must be a mapping such as {{kind: truncated, k: 1}}")
    if "kind" not in spec:
        raise ConfigError(f"{key}.kind is missing: set it to one of {kinds}")
    kind = spec["kind"]
    if not isinstance(kind, str) or kind not in BPTT_FIELDS:
        raise ConfigError(f"{key}.kind = {_show(kind)}: must be one of {kinds}")
    settings = BPTT_FIELDS[kind]
    unknown = [str(k) for k in spec if k != "kind" and k not in settings]
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: not a setting of kind {kind} "
                          f"(its settings: {', '.join(settings) or 'none'}); remove it")
    out = {"kind": kind}
    for name, (kind_type, check, default) in settings.items():
        out[name] = check_value(f"{key}.{name}", spec.get(name, default), kind_type, check)
    return out



FIELD_CHECKS: dict[str, Check] = {
    "stage": Check("1 (language modelling) or 2 (question answering)", lambda v: v in (1, 2)),
    "seed": Check("an integer in [0, 2147483647]", lambda v: 0 <= v < 2**31),
    "output_dir": _text("a non-empty path"),
    "init_from": _text("a save_pretrained directory", null="a fresh LCIRC model"),
    "base.name": _text("smollm2-135m, tiny_random or a Hugging Face model directory"),
    "base.dtype": _choice(DTYPES),
    "base.tiny": Check("a mapping of LlamaConfig arguments (over the tiny defaults)", fix=_fix_tiny),
    "lcirc.num_latents": _at_least(1),
    "lcirc.compressor_layers": _at_least(1),
    "lcirc.compressor_heads": _at_least(1, null="the base model's attention heads"),
    "lcirc.compressor_head_dim": _at_least(1, null="the base model's head dim"),
    "lcirc.compressor_ffn": _at_least(1, null="the base model's MLP size"),
    "lcirc.max_segment_len": _at_least(1),
    "lcirc.segment_len": _at_least(1, null="min(2048, lcirc.max_segment_len // 2)"),
    "lcirc.gca_layers": Check("a non-empty list of distinct decoder layer indices >= 0",
                              fix=_fix_gca_layers, null="every third layer and the last"),
    "lcirc.gca_heads": _at_least(1, null="the base model's attention heads"),
    "lcirc.gca_head_dim": _at_least(1, null="the base model's head dim"),
    "lcirc.gca_ffn": _at_least(1, null="the base model's MLP size"),
    "lcirc.mixer_heads": _at_least(1, null="lcirc.compressor_heads"),
    "lcirc.mixer_head_dim": _at_least(1, null="lcirc.compressor_head_dim"),
    "lcirc.mixer_ffn": _at_least(1, null="lcirc.compressor_ffn"),
    "lcirc.query_dependent": BOOL,
    "lcirc.memory_cap": _at_least(1, null="keep every memory vector"),
    "lcirc.norm_eps": _positive(),
    "lcirc.backend": _choice(BACKENDS),
    "lcirc.compressor_input_layers": _at_least(0, " (0: token embeddings)"),
    "lcirc.init.pos_emb_std": _positive(null="N(0, 1)"),
    "lcirc.init.latents_std": _positive(null="N(0, 1)"),
    "lcirc.init.attn_gate_init": Check("a number", null="0: the base model exactly"),
    "lcirc.init.compressor_q_init_scale": _positive(null="unscaled"),
    "lcirc.init.gca_q_init_scale": _positive(null="unscaled"),
    "lcirc.init.center_positions": BOOL,
    "lcirc.allow_tf32": Check("true or false", null="TF32 unless TRITON_F32_DEFAULT=ieee"),
    "lcirc.kv_hoist_max_segments": _at_least(1, " (1: no batched K/V products)"),
    "lcirc.kv_hoist_budget_bytes": _at_least(0),
    "lcirc.cuda_graphs": BOOL,
    "lcirc.hidden_size": _at_least(1, null="the base model's"),
    "lcirc.num_hidden_layers": _at_least(1, null="the base model's"),
    "lcirc.vocab_size": _at_least(1, null="the base model's"),
    "lcirc.extra": Check("a mapping"),
    "data.source": _choice(DATA_SOURCES),
    "data.train_path": _text("a non-empty path", null="none"),
    "data.val_path": _text("a non-empty path", null="none"),
    "data.hub_name": _text("a dataset name", null="none"),
    "data.text_field": _text("a non-empty field name"),
    "data.window": _at_least(8),
    "data.segmenting": _choice(SEGMENTING),
    "data.segment_min": _at_least(1),
    "data.segment_max": _at_least(1),
    "data.max_doc_tokens": _at_least(2, null="whole documents"),
    "data.max_answer_tokens": _at_least(1, null="every answer"),
    "data.qa_context": Check("a list [min, max] of context lengths with 1 <= min <= max",
                             fix=_fix_qa_context),
    "data.qa_tasks": Check("a non-empty list of distinct tasks from " + ", ".join(SyntheticQA.TASKS),
                           fix=_fix_qa_tasks),
    "data.qa_needle": _choice(QA_NEEDLES),
    "data.qa_template": _choice(tuple(t.name for t in TEMPLATES if not t.multiple_choice),
                                null="random open templates"),
    "data.hay_schedule": Check("a non-empty list of [tokens >= 1, from_step >= 0] pairs, the first "
                               "from step 0, steps increasing", fix=_fix_hay_schedule,
                               null="context lengths drawn from data.qa_context"),
    "data.qa_val_lengths": Check("a non-empty list of context lengths >= 1",
                                 fix=_fix_lengths,
                                 null="one length: the data.qa_context midpoint"),
    "data.val_docs": _at_least(1),
    "data.val_context": _at_least(9, null="4 * data.window"),
    "data.synthetic_docs": _at_least(1),
    "data.synthetic_len": _at_least(2),
    "data.cache_dir": _text("a non-empty path", null="the default token cache"),
    "data.repeat_passage": BOOL,
    "data.copy_mix": Check("a number in [0, 1] (0: next-window steps only)", lambda v: 0 <= v <= 1),
    "train.max_steps": _at_least(1),
    "train.grad_accum": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.lr": _positive(),
    "train.lr_mult": Check("a mapping from optimizer group (" + ", ".join(PARAM_GROUPS)
                           + ") to a multiplier > 0", fix=_fix_lr_mult),
    "train.warmup_steps": _at_least(0),
    "train.min_lr_ratio": Check("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "train.weight_decay": Check("a number >= 0", lambda v: v >= 0),
    "train.betas": Check("a list of two numbers in [0, 1)", fix=_fix_betas),
    "train.grad_clip": _positive(null="no clipping"),
    "train.bptt": Check("a mapping such as {kind: truncated, k: 1}", fix=check_bptt),
    "train.activation_checkpointing": BOOL,
    "train.contrast_weight": Check("a number >= 0 (0: no contrast term)", lambda v: v >= 0),
    "train.contrast_margin": Check("a number >= 0", lambda v: v >= 0),
    "train.memory_grad_centering": BOOL,
    "train.log_every": _at_least(0, " (0: no per-step lines)"),
    "train.eval_every": _at_least(0, " (0: no validation)"),
    "train.save_every": _at_least(0, " (0: save at the end only)"),
    "train.keep_last": _at_least(1),
    "train.max_minutes": _positive(null="no time limit"),
    "distributed.engine": _choice(ENGINES),
    "distributed.deepspeed_config": _text("a path to a DeepSpeed JSON file", null="ZeRO stage 0"),
    "distributed.backend": _choice(DIST_BACKENDS, null="nccl on GPU, gloo on CPU"),
}


# ---------------------------------------------------------------- rules between fields
def _check_stage(cfg: TrainConfig) -> None:
    d = cfg.data
    if d.repeat_passage and cfg.stage != 1:
        raise ConfigError("data.repeat_passage = true is a stage-1 objective; it needs stage: 1")
    if d.copy_mix > 0 and (cfg.stage != 1 or d.repeat_passage):
        raise ConfigError(f"data.copy_mix = {d.copy_mix} mixes copy-task documents into stage-1 "
                          "next-window training; it needs stage: 1 and data.repeat_passage: false "
                          "(which is copy_mix 1 with copy-task validation)")
    if d.source not in STAGE_SOURCES[cfg.stage]:
        gives = "no QA samples" if cfg.stage == 2 else "no training documents"
        raise ConfigError(f"data.source = {d.source!r} gives {gives} for stage {cfg.stage}; "
                          f"stage {cfg.stage} reads one of {', '.join(STAGE_SOURCES[cfg.stage])}")


def _check_source_paths(cfg: TrainConfig) -> None:
    d = cfg.data
    needs = {"text_files": "train_path", "token_files": "train_path", "qa_files": "train_path",
             "hub": "hub_name"}
    key = needs.get(d.source)
    if key and getattr(d, key) is None:
        raise ConfigError(f"data.{key} is null, but data.source = {d.source!r} reads it; set data.{key}")
    if d.source in ("text_files", "token_files") and d.val_path is None and cfg.train.eval_every:
        raise ConfigError(f"data.val_path is null: data.source = {d.source!r} then has no validation "
                          "documents; set data.val_path, or train.eval_every: 0 for no validation")
    if cfg.lcirc.init.center_positions and not cfg.init_from and d.source == "qa_files":
        raise ConfigError("lcirc.init.center_positions = true needs stage-1 training documents, and "
                          "data.source = 'qa_files' has none; set it to false")


def _check_segments(cfg: TrainConfig) -> None:
    d, lc = cfg.data, cfg.lcirc
    if d.segment_min > d.segment_max:
        raise ConfigError(f"data.segment_min = {d.segment_min} is larger than data.segment_max = "
                          f"{d.segment_max}; random segment lengths are drawn from [segment_min, segment_max]")
    if d.segment_max > lc.max_segment_len:
        raise ConfigError(f"data.segment_max = {d.segment_max} exceeds lcirc.max_segment_len = "
                          f"{lc.max_segment_len} (the longest segment the position table holds)")
    if lc.segment_len is not None and 2 * lc.segment_len - 1 > lc.max_segment_len:
        raise ConfigError(f"lcirc.segment_len = {lc.segment_len}: validation segments reach "
                          f"{2 * lc.segment_len - 1} tokens, more than lcirc.max_segment_len = "
                          f"{lc.max_segment_len}")


def _check_validation(cfg: TrainConfig) -> None:
    d = cfg.data
    if d.val_context is not None and d.val_context <= d.window:
        raise ConfigError(f"data.val_context = {d.val_context}: must be larger than data.window = "
                          f"{d.window} (validation compresses all but the last window), or null "
                          "(4 * data.window)")


def _check_needle(cfg: TrainConfig) -> None:
    d = cfg.data
    if d.qa_needle != "middle":
        return
    if cfg.stage != 2 or d.source not in ("kjv", "synthetic_tokens"):
        raise ConfigError("data.qa_needle = 'middle' places the needles of the stage-2 synthetic "
                          f"tasks; it needs stage: 2 and data.source: kjv or synthetic_tokens (got "
                          f"stage {cfg.stage}, source {d.source!r})")
    if d.source == "kjv" and "book" in d.qa_tasks:
        raise ConfigError("data.qa_needle = 'middle': the 'book' task plants no needle; "
                          "use data.qa_tasks from [passkey, fact]")


def _check_stage2_options(cfg: TrainConfig) -> None:
    d = cfg.data
    for key in ("qa_template", "hay_schedule", "qa_val_lengths", "max_answer_tokens"):
        if getattr(d, key) is not None and cfg.stage != 2:
            raise ConfigError(f"data.{key} shapes the stage-2 QA samples; it needs stage: 2 "
                              f"(got stage {cfg.stage})")
    for key in ("hay_schedule", "qa_val_lengths"):
        if getattr(d, key) is not None and d.source not in ("kjv", "synthetic_tokens"):
            raise ConfigError(f"data.{key} sets the context lengths of the synthetic tasks; it needs "
                              f"data.source kjv or synthetic_tokens (got {d.source!r})")
    if d.qa_template is not None and d.source != "kjv":
        raise ConfigError(f"data.qa_template = {d.qa_template!r} applies to the synthetic tasks of "
                          f"data.source: kjv (got {d.source!r})")


def _check_batch(cfg: TrainConfig) -> None:
    t = cfg.train
    for key, on in (("contrast_weight", t.contrast_weight > 0),
                    ("memory_grad_centering", t.memory_grad_centering)):
        if on and t.batch_size < 2:
            raise ConfigError(f"train.{key} = {_show(getattr(t, key))} compares or centres the "
                              f"memories of a batch; it needs train.batch_size >= 2 (got "
                              f"{t.batch_size})")


def _check_distributed(cfg: TrainConfig) -> None:
    dist = cfg.distributed
    if dist.engine == "deepspeed":
        return
    for key in ("deepspeed_config", "backend"):
        value = getattr(dist, key)
        if value is not None:
            raise ConfigError(f"distributed.{key} = {value!r} is only read by distributed.engine: "
                              f"deepspeed (engine is {dist.engine!r}); set the engine or remove the key")


def _check_tiny_base(cfg: TrainConfig) -> None:
    """base.name tiny_random: base.tiny must make a LlamaConfig that the LCIRC settings fit."""
    if cfg.base.name != "tiny_random":
        return
    from transformers import LlamaConfig

    known = {f.name for f in dataclasses.fields(LlamaConfig)} if dataclasses.is_dataclass(LlamaConfig) \
        else set(inspect.signature(LlamaConfig.__init__).parameters)
    unknown = [str(k) for k in cfg.base.tiny if k not in known]
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"base.tiny.{unknown[0]}: not a LlamaConfig argument{hint}")
    try:
        base = LlamaConfig(**cfg.base.tiny)
    except Exception as e:  # noqa: BLE001 - LlamaConfig's own validators raise various types
        raise ConfigError(f"base.tiny = {cfg.base.tiny}: LlamaConfig refuses it: "
                          f"{' '.join(str(e).split())}") from e
    layers = base.num_hidden_layers
    bad = [i for i in cfg.lcirc.gca_layers or [] if i >= layers]
    if bad:
        raise ConfigError(f"lcirc.gca_layers = {cfg.lcirc.gca_layers}: layer(s) {bad} do not exist in "
                          f"the tiny_random base (base.tiny.num_hidden_layers = {layers})")
    if cfg.lcirc.compressor_input_layers > layers:
        raise ConfigError(f"lcirc.compressor_input_layers = {cfg.lcirc.compressor_input_layers} exceeds "
                          f"the tiny_random base's {layers} layers (base.tiny.num_hidden_layers)")
    if cfg.data.source == "synthetic_tokens" and base.vocab_size < 5:
        raise ConfigError(f"base.tiny.vocab_size = {base.vocab_size}: data.source synthetic_tokens "
                          "draws tokens 4 .. vocab_size - 1; use vocab_size >= 5")


CROSS_RULES = (_check_stage, _check_source_paths, _check_segments, _check_validation, _check_needle,
               _check_stage2_options, _check_batch, _check_distributed, _check_tiny_base)


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
    """(key path, owner, name, type, optional) of every non-section field, depth first."""
    for name, (kind, optional) in _field_types(type(obj)).items():
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(kind):
            yield from _leaves(getattr(obj, name), key)
        else:
            yield key, obj, name, kind, optional


def _unknown_key(name, known, where: str) -> str:
    key = f"{where}.{name}" if where else str(name)
    close = difflib.get_close_matches(str(name), list(known), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return f"{key}: unknown key in {where or 'the top level'}; {hint}known keys: {', '.join(known)}"


def _build(cls, data: dict, where: str = ""):
    fields = _field_types(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(_unknown_key(unknown[0], fields, where))
    kwargs = {}
    for name, value in data.items():
        kind, _ = fields[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(kind):
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise ConfigError(f"{key} = {_show(value)}: must be a section (a mapping of keys)")
            value = _build(kind, value, key)
        elif key in FIELD_CHECKS:       # converted before a section that checks itself sees it
            value = check_value(key, value, kind, FIELD_CHECKS[key], fields[name][1])
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError as e:            # LCIRCConfig / InitRecipe rules, named by key path
        raise ConfigError(re.sub(r"\b(LCIRCConfig|InitRecipe)\.", f"{where}.", str(e))) from None


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
    import yaml

    if "=" not in item:
        raise ConfigError(f"--set {item}: must look like key=value, e.g. train.max_steps=10")
    key, text = item.split("=", 1)
    parts = _override_path(key.strip(), item)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item}: the value is not valid YAML ({' '.join(str(e).split())})") from None
    node = data
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item}: {'.'.join(parts[:i + 1])} is a value, not a section")
    node[parts[-1]] = value


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not data:
        raise ConfigError(f"config file {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys (stage, base, lcirc, data, "
                          f"train, ...), not a {type(data).__name__}")
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply `overrides` ("key=value", value read as YAML) and check it all."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a directory; pass a YAML file (see train/configs/)")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    data = _read_yaml(path)
    for item in overrides or []:
        apply_override(data, item)
    return config_from_dict(data)
