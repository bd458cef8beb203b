"""`lcirc train --config <yaml>`: train LCIRC / QD-LCIRC (plain process, torchrun or deepspeed)."""
from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train LCIRC (stage 1) or QD-LCIRC (stage 2) from a YAML config",
                              description=__doc__)
    p.add_argument("--config", required=True, help="YAML file (see train/configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config entry, e.g. --set train.max_steps=10 (repeatable)")
    p.add_argument("--resume", default="auto",
                   help="'auto' (latest checkpoint in output_dir, if any), 'none', or a checkpoint dir")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None,
                   help="set by the deepspeed launcher (LOCAL_RANK is read from the environment)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-step lines")
    return p


def run(args) -> int:
    import os

    import torch

    from ..training import load_config, run_training

    if args.local_rank is not None:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.overrides)
    result = run_training(cfg, resume=args.resume, quiet=args.quiet)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps({"opt_step": result["opt_step"], "best_val": result["best_val"],
                          "final_val": result["final_val"]}))
    return 0
