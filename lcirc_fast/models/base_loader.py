"""Load a frozen base model by name: the bundled SmolLM2, the tiny random preset, or a local
Hugging Face directory of any family in `BASE_ADAPTERS`. Nothing is downloaded.
"""
from __future__ import annotations

import json
import os

import torch

from ..assets import SMOLLM2_ALIASES, SMOLLM2_NAME
from ..errors import ConfigError
from .base_adapter import adapter_for_type

TINY_RANDOM = "tiny_random"
BASE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")   # refused: never unpickled
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def canonical_base_name(name: str) -> str:
    """`name` with an alias of a bundled model replaced by its canonical name."""
    return SMOLLM2_NAME if name in SMOLLM2_ALIASES else name


def is_named_base(name: str) -> bool:
    """True for the names `load_base` knows without a directory."""
    return canonical_base_name(name) in (SMOLLM2_NAME, TINY_RANDOM)


def has_tokenizer(path: str | os.PathLike) -> bool:
    return any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES)


def check_base_dir(path: str | os.PathLike, label: str = "base model",
                   tokenizer: bool = False) -> str:
    """The `model_type` of a Hugging Face model directory, checked without loading weights.

    ConfigError when config.json or the safetensors weights are missing (pickled
    pytorch_model.bin weights are refused, not read), config.json is unreadable, its family is
    not supported, or (with `tokenizer`) it has no tokenizer.
    """
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        raise ConfigError(f"{label} {path} has no config.json; give a Hugging Face model "
                          f"directory or '{SMOLLM2_NAME}'")
    if not any(os.path.isfile(os.path.join(path, w)) for w in BASE_WEIGHTS):
        pickled = [w for w in PICKLED_WEIGHTS if os.path.isfile(os.path.join(path, w))]
        if pickled:
            raise ConfigError(f"{label} {path} holds pickled weights ({pickled[0]}), which lcirc_fast "
                              f"refuses to load; it wants safetensors: convert them to "
                              f"model.safetensors (e.g. with save_pretrained) in a trusted environment")
        raise ConfigError(f"{label} {path} has a config.json but no weights (one of "
                          f"{', '.join(BASE_WEIGHTS)})")
    try:
        with open(config, encoding="utf-8") as f:
            info = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{label} {path}: config.json is not valid JSON ({e}); restore the "
                          f"model directory") from None
    model_type = info.get("model_type") if isinstance(info, dict) else None
    if model_type is None:
        raise ConfigError(f"{label} {path}: config.json names no model_type; save the model "
                          f"with save_pretrained to write a complete config")
    try:
        adapter_for_type(model_type)
    except ConfigError as e:
        raise ConfigError(f"{label} {path}: {e}") from None
    if tokenizer and not has_tokenizer(path):
        raise ConfigError(f"{label} {path} has no tokenizer (one of {', '.join(TOKENIZER_FILES)}); "
                          f"save the tokenizer into it with tokenizer.save_pretrained")
    return model_type


def random_base(config, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    """A causal LM of a supported family with random weights from its HF `config`, in eval mode."""
    from transformers import AutoModelForCausalLM

    adapter_for_type(config.model_type)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation,
                                            dtype=dtype).eval()


def quietly(load, *args, **kwargs):
    """`load(*args, **kwargs)` without transformers' progress bar: a local load is quick, and the
    command line's stderr holds its own lines only."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load(*args, **kwargs)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def load_base(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32, *,
              device: torch.device | str | None = None, tiny: dict | None = None, seed: int = 0,
              tokenizer: bool = True):
    """(causal LM in eval mode, tokenizer or None) for a base-model name or directory.

    Args:
        name_or_path: 'smollm2-135m' (canonical; alias 'smollm2'): the bundled SmolLM2-135M;
            'tiny_random': a random Llama of the LlamaConfig arguments `tiny`, seeded by `seed`
            (no tokenizer); otherwise a local Hugging Face model directory of a family in
            `BASE_ADAPTERS` (its config.json is checked before any weight is read).
        tokenizer: also load the directory's tokenizer (None when it has none).
    """
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"dtype must be a torch.dtype, got {dtype!r}")
    name = canonical_base_name(os.fspath(name_or_path))
    tok = None
    if name == SMOLLM2_NAME:
        from .. import assets

        model, tok = quietly(assets.load_smollm2, dtype)
    elif name == TINY_RANDOM:
        from transformers import LlamaConfig

        if not isinstance(tiny, dict):
            raise ConfigError(f"{TINY_RANDOM} needs its LlamaConfig arguments, e.g. tiny="
                              f"dict(vocab_size=256, hidden_size=64, num_hidden_layers=2)")
        torch.manual_seed(seed)
        model = random_base(LlamaConfig(**tiny), dtype)
    elif os.path.isdir(name):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_base_dir(name)
        model = quietly(AutoModelForCausalLM.from_pretrained, name, dtype=dtype, local_files_only=True,
                        use_safetensors=True)
        if tokenizer and has_tokenizer(name):
            tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
    else:
        raise ConfigError(f"base model {name!r} is neither a bundled name ('{SMOLLM2_NAME}', "
                          f"alias {', '.join(map(repr, SMOLLM2_ALIASES))}; '{TINY_RANDOM}') nor "
                          f"a model directory")
    model.eval()
    if device is not None:
        model = model.to(device)
    return model, tok
