"""Rules of the training config that tie several fields (or a field and a file) together.

Each rule takes a TrainConfig whose single values are checked already and raises a ConfigError
naming every key involved; `CROSS_RULES` lists them in the order `TrainConfig.validate` runs them.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect

from ..errors import ConfigError
from .config_files import base_position_limit, read_deepspeed_json
from .config_values import show

STAGE_SOURCES = {1: ("kjv", "text_files", "token_files", "hub", "synthetic_tokens"),
                 2: ("kjv", "qa_files", "hub", "synthetic_tokens")}


def _check_stage(cfg) -> None:
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


def _check_source_paths(cfg) -> None:
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


def _check_segments(cfg) -> None:
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


def _check_validation(cfg) -> None:
    d = cfg.data
    if d.val_context is not None and d.val_context <= d.window:
        raise ConfigError(f"data.val_context = {d.val_context}: must be larger than data.window = "
                          f"{d.window} (validation compresses all but the last window), or null "
                          "(4 * data.window)")


def _check_needle(cfg) -> None:
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


def _check_stage2_options(cfg) -> None:
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


def _check_batch(cfg) -> None:
    t = cfg.train
    for key, on in (("contrast_weight", t.contrast_weight > 0),
                    ("memory_grad_centering", t.memory_grad_centering)):
        if on and t.batch_size < 2:
            raise ConfigError(f"train.{key} = {show(getattr(t, key))} compares or centres the "
                              f"memories of a batch; it needs train.batch_size >= 2 (got "
                              f"{t.batch_size})")


def _check_distributed(cfg) -> None:
    dist = cfg.distributed
    if dist.engine == "deepspeed":
        return
    for key in ("deepspeed_config", "backend"):
        value = getattr(dist, key)
        if value is not None:
            raise ConfigError(f"distributed.{key} = {value!r} is only read by distributed.engine: "
                              f"deepspeed (engine is {dist.engine!r}); set the engine or remove the key")


def _check_tiny_base(cfg) -> None:
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


def _check_steps(cfg) -> None:
    t = cfg.train
    if t.warmup_steps > t.max_steps:
        raise ConfigError(f"train.warmup_steps = {t.warmup_steps} is more than train.max_steps = {t.max_steps}: "
                          "the learning rate would never reach train.lr; lower train.warmup_steps or raise "
                          "train.max_steps")


def _check_query_dependent(cfg) -> None:
    if cfg.lcirc.query_dependent and cfg.stage != 2:
        raise ConfigError(f"lcirc.query_dependent = true builds the QD-LCIRC mixer, which reads the question "
                          f"of a stage-2 QA sample; it needs stage: 2 (got stage {cfg.stage}), or set "
                          "lcirc.query_dependent: false")


def _check_window(cfg) -> None:
    """data.window tokens reach the base model at positions 0 .. window - 1."""
    found = base_position_limit(cfg.base.name, cfg.base.tiny)
    if found is not None and cfg.data.window > found[0]:
        limit, where = found
        raise ConfigError(f"data.window = {cfg.data.window} is more than the {limit} positions the base model "
                          f"(base.name = {cfg.base.name!r}) reads ({where}); use data.window <= {limit}")


def _check_deepspeed_file(cfg) -> None:
    path = cfg.distributed.deepspeed_config
    if cfg.distributed.engine == "deepspeed" and path is not None:
        read_deepspeed_json(path)


CROSS_RULES = (_check_stage, _check_source_paths, _check_segments, _check_validation, _check_needle,
               _check_stage2_options, _check_batch, _check_distributed, _check_tiny_base, _check_steps,
               _check_query_dependent, _check_window, _check_deepspeed_file)
