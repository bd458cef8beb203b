"""`lcirc train --config <yaml>`: train LCIRC / QD-LCIRC (plain process, torchrun or deepspeed).

The whole config (and every --set) is checked, and the files it names looked up, before the model,
the tokenizer or the data are built.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .options import add_backend_option, check_backend


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train LCIRC (stage 1) or QD-LCIRC (stage 2) from a YAML config",
                              description=__doc__)
    p.add_argument("--config", required=True, help="YAML file (see train/configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.max_steps=10 (repeatable; the value "
                        "is read as YAML; a key of a single section may omit it: --set grad_accum=4)")
    p.add_argument("--resume", default="auto",
                   help="'auto' (latest checkpoint in output_dir, if any), 'none', or a checkpoint dir")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help="set by the deepspeed launcher (LOCAL_RANK is read from the environment)")
    add_backend_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-step lines")
    p.add_argument("--dry-run", action="store_true",
                   help="build the model on the meta device (no download), check the config and its data, "
                        "print parameters, memory per GPU, FLOPs and step time, and whether it fits "
                        "(exit 0: fits, 1: does not)")
    p.add_argument("--gpus", type=int, default=1, help="--dry-run: world size (GPUs in all)")
    p.add_argument("--gpu-memory", default="80GB", help="--dry-run: memory of one GPU, e.g. 80GB (GiB)")
    return p


def check_inputs(cfg, args) -> None:
    """Refuse arguments and files the run would fail on only after building the model."""
    import os

    from ..assets import SMOLLM2_NAME
    from ..errors import ConfigError
    from ..models.base_loader import check_base_dir, is_named_base
    from ..models.pretrained import WEIGHTS_NAME

    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads {args.threads}: must be >= 1")
    if args.resume not in ("auto", "none") and not Path(args.resume).is_dir():
        raise FileNotFoundError(f"--resume {args.resume}: no such checkpoint directory "
                                "(use auto, none or a checkpoints/step* directory)")
    if not is_named_base(cfg.base.name):
        if not Path(cfg.base.name).is_dir():
            raise FileNotFoundError(f"base.name = {cfg.base.name!r}: not {SMOLLM2_NAME}, tiny_random "
                                    "or a Hugging Face model directory")
        check_base_dir(cfg.base.name, label="base.name",
                       tokenizer=cfg.data.source != "synthetic_tokens")
    if cfg.base.name == "tiny_random" and cfg.data.source != "synthetic_tokens":
        raise ConfigError(f"data.source = {cfg.data.source!r} needs a tokenizer, and base.name = "
                          "'tiny_random' has none; use data.source: synthetic_tokens or a base model "
                          "with a tokenizer")
    if cfg.init_from and not (Path(cfg.init_from) / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"init_from = {cfg.init_from!r}: no {WEIGHTS_NAME} there (a "
                                "save_pretrained directory such as runs/<stage-1 run>/final)")
    world = os.environ.get("WORLD_SIZE", "1")
    if cfg.distributed.engine == "plain" and world.strip() not in ("", "1"):
        raise ConfigError(f"distributed.engine = 'plain' runs one process, but the launcher started "
                          f"WORLD_SIZE={world}; use distributed.engine: deepspeed")
    ds = cfg.distributed.deepspeed_config
    if cfg.distributed.engine == "deepspeed" and ds and not Path(ds).is_file():
        raise FileNotFoundError(f"distributed.deepspeed_config = {ds!r}: no such file")


def run(args) -> int:
    import os

    from ..training import load_config, run_training

    check_backend(args.backend)
    backend = [f"lcirc.backend={args.backend}"] if args.backend else []   # --set lcirc.backend=...
    cfg = load_config(args.config, [*args.overrides, *backend])
    if args.dry_run:
        from ..training.dry_run import dry_run, format_report

        report = dry_run(cfg, args.gpus, args.gpu_memory)
        print(format_report(report, cfg))
        return 0 if report.fits else 1
    check_inputs(cfg, args)
    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = run_training(cfg, resume=args.resume, quiet=args.quiet)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps({"opt_step": result["opt_step"], "best_val": result["best_val"],
                          "final_val": result["final_val"]}))
    return 0
