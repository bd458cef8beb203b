"""The base model's shape and the LCIRC model of a training config, built on the meta device.

Nothing is downloaded and no weight is read: the base's Hugging Face config comes from
`base.tiny` (tiny_random), the bundled SmolLM2 conversion, `<base.name>/config.json`, or, when
that directory is absent, a shipped shape file `train/configs/bases/<name>/config.json`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...errors import ConfigError

BASES_DIR = Path(__file__).resolve().parents[3] / "train" / "configs" / "bases"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class BaseShape:
    """config: the base's Hugging Face config; source: where it was read from (for the report);
    weights_found: whether `base.name` holds loadable weights (a real run needs them)."""
    config: object
    source: str
    weights_found: bool


def _shipped(name: str) -> Path:
    return BASES_DIR / Path(name.rstrip("/")).name.lower() / "config.json"


def base_shape(cfg) -> BaseShape:
    """The Hugging Face config of `cfg.base` without loading weights (ConfigError if unknown)."""
    from transformers import AutoConfig, LlamaConfig

    from ...models.base_loader import BASE_WEIGHTS, TINY_RANDOM, canonical_base_name

    name = canonical_base_name(cfg.base.name)
    if name == TINY_RANDOM:
        return BaseShape(LlamaConfig(**cfg.base.tiny), "base.tiny (tiny_random)", True)
    from ...assets import SMOLLM2_NAME

    if name == SMOLLM2_NAME:
        from ...assets import load_smollm2, smollm2_cache_dir

        if not (smollm2_cache_dir() / "config.json").is_file():
            load_smollm2()                      # local conversion of the bundled GGUF, once
        return BaseShape(AutoConfig.from_pretrained(smollm2_cache_dir(), local_files_only=True),
                         f"{SMOLLM2_NAME} (bundled)", True)
    own = Path(name) / "config.json"
    if own.is_file():
        weights = any((Path(name) / w).is_file() for w in BASE_WEIGHTS)
        return BaseShape(AutoConfig.from_pretrained(name, local_files_only=True), str(own), weights)
    shipped = _shipped(name)
    if shipped.is_file():
        return BaseShape(AutoConfig.from_pretrained(shipped.parent, local_files_only=True),
                         f"{shipped} (shape only: {name} is not there yet)", False)
    raise ConfigError(f"base.name = {name!r}: no config.json there and no shipped shape in "
                      f"{BASES_DIR}; give a model directory (its config.json is enough for a dry run)")


def meta_model(cfg, shape: BaseShape):
    """The LCIRC model of `cfg` around the base, every tensor on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    from ...models import LCIRCForCausalLM

    lcfg = cfg.lcirc.with_runtime(backend="torch") if cfg.lcirc.backend != "torch" else cfg.lcirc
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(shape.config, dtype=DTYPES[cfg.base.dtype])
        model = LCIRCForCausalLM.from_base(base, lcfg)
    return model


def parameter_parts(model) -> dict[str, dict[str, int]]:
    """{"trainable": {part: count}, "frozen": {part: count}} by top-level module (latents,
    compressor, gca, mixer; the base split into embeddings, decoder layers, head)."""
    out: dict[str, dict[str, int]] = {"trainable": {}, "frozen": {}}
    for name, p in model.named_parameters():
        part = name.split(".")[0]
        if part == "base":
            part = ("base embeddings" if "embed" in name else "base lm_head" if "lm_head" in name
                    else "base decoder layers" if ".layers." in name else "base norm")
        side = "trainable" if p.requires_grad else "frozen"
        out[side][part] = out[side].get(part, 0) + p.numel()
    return out

