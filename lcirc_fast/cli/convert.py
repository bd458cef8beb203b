"""`lcirc convert`: a reference implementation `.pt` checkpoint to a save_pretrained directory
(`to-pretrained`) and back (`to-official`). The LCIRC sizes are read from the checkpoint's
tensors; heads and GCA placement follow the base model's defaults."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from pathlib import Path

from ..errors import CheckpointError, ConfigError


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("convert", help="reference .pt checkpoint <-> save_pretrained directory",
                              description=__doc__)
    p.add_argument("direction", choices=["to-pretrained", "to-official"])
    p.add_argument("--base", required=True, help="smollm2 | Hugging Face model directory the LCIRC was trained on")
    p.add_argument("--src", required=True, help="to-pretrained: the reference .pt file; to-official: the "
                                                "save_pretrained directory")
    p.add_argument("--out", required=True, help="to-pretrained: a new directory; to-official: a .pt file")
    p.add_argument("--force", action="store_true",
                   help="replace an existing --out (a file, or a directory written by save_pretrained)")
    return p


def config_from_official(ckpt: dict):
    """An LCIRCConfig with the sizes a reference checkpoint's tensors show: latents K,
    Perceiver layers, position-table rows, MLP widths, and whether it has a QD mixer."""
    from ..config import LCIRCConfig

    try:
        latent = ckpt["latent_state_dict"]["latent"]
        comp = ckpt["compressor_state_dict"]
        layers = {int(m.group(1)) for k in comp if (m := re.match(r"layers\.(\d+)\.", k))}
        cfg = LCIRCConfig(num_latents=int(latent.shape[0]), compressor_layers=len(layers),
                          max_segment_len=int(comp["pos_emb"].shape[0]),
                          compressor_ffn=int(comp["layers.0.1.1.weight"].shape[0]),
                          gca_ffn=int(ckpt["Xattn_layers_state_dict"]["0.ff.1.weight"].shape[0]),
                          query_dependent="mixer_state_dict" in ckpt)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"not a reference LCIRC checkpoint: {type(e).__name__} {e} while reading "
                              "its sizes (expected compressor_state_dict with pos_emb and layers.N..., "
                              "Xattn_layers_state_dict, latent_state_dict['latent'])") from None
    return cfg


def official_model(base, path: str | os.PathLike):
    """LCIRCForCausalLM around `base` holding the weights of a reference `.pt` checkpoint."""
    from ..models import LCIRCForCausalLM
    from ..models.official import _read_checkpoint

    ckpt = _read_checkpoint(path)
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} is not a reference LCIRC checkpoint: it holds a "
                              f"{type(ckpt).__name__}, not a dict of state dicts")
    model = LCIRCForCausalLM.from_base(base, config_from_official(ckpt))
    try:
        model.load_official_checkpoint(ckpt)
    except KeyError as e:           # a key the reference layout does not have
        raise CheckpointError(f"{path} is not a reference LCIRC checkpoint: {e.args[0] if e.args else e}") from None
    return model


def _check(args) -> None:
    out = Path(args.out)
    if out.is_symlink():
        raise ConfigError(f"--out {out} is a symbolic link (to {os.readlink(out)}); convert never writes "
                          "through a link: give the path itself")
    if out.exists() and not args.force:
        raise ConfigError(f"--out {out} exists; pass a new path or --force to replace it")
    src = Path(args.src)
    if args.direction == "to-pretrained" and not src.is_file():
        raise CheckpointError(f"--src {src}: no such file; pass the reference implementation's .pt checkpoint")
    if args.direction == "to-official" and not src.is_dir():
        raise CheckpointError(f"--src {src}: no such directory; pass a save_pretrained directory")
    if args.direction == "to-official" and out.is_dir():
        raise ConfigError(f"--out {out} is a directory; to-official writes one .pt file")
    if args.direction == "to-pretrained" and out.is_dir():
        from ..models.pretrained import CONFIG_NAME, WEIGHTS_NAME

        others = sorted(set(os.listdir(out)) - {CONFIG_NAME, WEIGHTS_NAME})
        if others:
            raise ConfigError(f"--out {out} is a directory holding {len(others)} other files ({', '.join(others[:3])}"
                              f"{', ...' if len(others) > 3 else ''}); --force replaces a file or a save_pretrained "
                              "directory only: give a new path")
    if out.exists() and not (out.is_file() or out.is_dir()):
        raise ConfigError(f"--out {out} exists and is neither a file nor a directory")


def _temp_name(out: Path) -> Path:
    return out.parent / f".{out.name}.tmp-{os.getpid()}"


def write_pretrained(model, out: Path) -> None:
    """save_pretrained into a new directory beside `out`, then renamed to `out`; an existing `out`
    (a file or a save_pretrained directory, checked by _check) is moved aside first and removed
    once the new one is in place (put back if the rename fails)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(out)
    os.mkdir(tmp)                          # fails if anything is there: nothing is written through
    old = None
    try:
        model.save_pretrained(tmp)
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            if old is not None:
                os.rename(old, out)
                old = None
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()


def write_official(model, out: Path) -> None:
    """The reference checkpoint written to a new file beside `out` (created exclusively, so never
    through a link), then renamed over `out`."""
    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(out)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(model.official_state_dict(), f)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def run(args) -> int:
    from ..models import LCIRCForCausalLM, load_base

    _check(args)
    base, _ = load_base(args.base, tokenizer=False)
    if args.direction == "to-pretrained":
        model = official_model(base, args.src)
        write_pretrained(model, Path(args.out))
    else:
        model = LCIRCForCausalLM.from_pretrained(args.src, base=base)
        write_official(model, Path(args.out))
    kind = "QD-LCIRC" if model.config.query_dependent else "LCIRC"
    print(f"{kind} (K={model.config.num_latents}, {model.config.compressor_layers} Perceiver layers, "
          f"GCA before layers {model.config.gca_layers}) written to {args.out}", file=sys.stderr)
    return 0
