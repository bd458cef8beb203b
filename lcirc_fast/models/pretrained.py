"""The files of `save_pretrained`: LCIRC weights (safetensors, checksummed) and config JSON.

The base model is referenced by name (`base_model` in the JSON), never copied.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings

import torch
import torch.nn as nn

from ..config import MIXER_SIZES, LCIRCConfig
from ..errors import CheckpointError, ConfigError
from ..memory import content_checksum

WEIGHTS_NAME = "lcirc_model.safetensors"
CONFIG_NAME = "lcirc_config.json"
MODEL_FORMAT = "lcirc_fast.model"
MODEL_FORMAT_VERSION = "2"      # 2: sha256 checksum of the weights in the metadata


def save_pretrained(model, directory: str | os.PathLike) -> None:
    """Write `model.lcirc_state_dict()` and the config JSON into `directory` (each file written
    to a temp name, then renamed)."""
    from safetensors.torch import save_file

    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().to("cpu", copy=True).contiguous()
             for k, v in model.lcirc_state_dict().items()}
    meta = {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION}
    meta["checksum"] = content_checksum(meta, state)
    tmp = os.path.join(directory, WEIGHTS_NAME + ".tmp")
    save_file(state, tmp, metadata=meta)
    os.replace(tmp, os.path.join(directory, WEIGHTS_NAME))
    cfg, base_cfg = model.config, model.base.config
    info = {"lcirc_config": cfg.to_dict(),
            "base_model": getattr(base_cfg, "_name_or_path", "") or base_cfg.model_type,
            "base_hidden_size": cfg.hidden_size,
            "base_num_hidden_layers": cfg.num_hidden_layers,
            "base_vocab_size": cfg.vocab_size}
    tmp = os.path.join(directory, CONFIG_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(directory, CONFIG_NAME))


_RESAVE = "save the model again with save_pretrained, or restore the directory from a copy"


def read_pretrained_config(path: str, base: nn.Module) -> LCIRCConfig:
    """The LCIRCConfig in a save_pretrained config file, checked against `base`."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no {CONFIG_NAME} at {path}; the directory was not written by "
                              f"save_pretrained or is incomplete: {_RESAVE}")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is corrupt: "
                              f"{_RESAVE}") from None
    if not isinstance(info, dict) or not isinstance(info.get("lcirc_config"), dict):
        raise CheckpointError(f"{path} has no 'lcirc_config' object; it is not an LCIRC "
                              f"config file: {_RESAVE}")
    fields = dict(info["lcirc_config"])
    try:
        config = LCIRCConfig.from_dict(fields)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    for field in ("hidden_size", "num_hidden_layers", "vocab_size"):
        saved, given = getattr(config, field), getattr(base.config, field)
        if saved != given:
            raise CheckpointError(f"{path} was saved for a base model with {field}={saved}, but "
                                  f"the given base has {given}; load it with the base model it "
                                  f"was trained on ({info.get('base_model', 'unknown')!r})")
    if config.query_dependent and not any(k in fields for k in MIXER_SIZES):
        # saved before the mixer had sizes of its own: it was built like a GCA block
        gca = config.resolve(base.config)
        config = dataclasses.replace(config, mixer_heads=gca.gca_heads,
                                     mixer_head_dim=gca.gca_head_dim, mixer_ffn=gca.gca_ffn)
    return config


def read_pretrained_weights(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a save_pretrained weights file (CPU)."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"no {WEIGHTS_NAME} at {path}; the directory is incomplete: "
                              f"{_RESAVE}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path} cannot be read as safetensors ({e}); the file is "
                              f"truncated or corrupt: {_RESAVE}") from None
    if meta.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not an lcirc_fast model file (metadata format="
                              f"{meta.get('format')!r}): {_RESAVE}")
    _check_weights_version(path, meta, state)
    return state


def _check_weights_version(path: str, meta: dict[str, str], state: dict) -> None:
    """Version 2 files must match their checksum; version 1 files (no checksum) are read with
    a warning."""
    version = meta.get("version")
    if version == "1":
        warnings.warn(f"{path} has no checksum (model format version 1), so corruption cannot "
                      f"be detected; save the model again to add one", stacklevel=4)
        return
    if version != MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{path} has model format version {version!r}; this lcirc_fast "
                              f"reads versions 1 and {MODEL_FORMAT_VERSION}")
    if "checksum" not in meta:
        raise CheckpointError(f"{path} lacks its checksum; the file is incomplete: {_RESAVE}")
    if content_checksum(meta, state) != meta["checksum"]:
        raise CheckpointError(f"{path} fails its checksum: its content changed after it was "
                              f"written (a corrupt copy or an edit); {_RESAVE}")


def check_pretrained_state(path: str, state: dict[str, torch.Tensor], model) -> None:
    """Names, shapes and finiteness of the saved tensors against `model`."""
    own = model.lcirc_state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}; {_RESAVE}")
    for name, t in state.items():
        if t.shape != own[name].shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, the "
                                  f"config needs {tuple(own[name].shape)}; {_RESAVE}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or Inf (training "
                                  f"diverged, or the file is corrupt); use an earlier checkpoint")
