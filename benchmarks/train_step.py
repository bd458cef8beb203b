"""One stage-2 training step (forward + backward of the answer loss, compression included) of a
train config, side by side in one process: the answer-only loss and unbound memory K/V views
(the code as it is) against the full-logits loss and the memory K/V views taken by indexing.

    python benchmarks/train_step.py --config train/configs/smollm2_kjv_ruler.yaml --hay 256,4096 --threads 2

Each repeat draws the same micro-batch for both variants, alternating them so drift hits both
alike; no optimizer step is taken. Prints a table and, with --out, writes JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _indexed_project(injection):
    """`Injection.project` with every layer's K and V taken by indexing the fused product."""
    from lcirc_fast.modules.zero import whole

    def project(hidden):
        blocks = list(injection.gca.items())
        w = torch.cat(whole(*(b.attn.to_kv.weight for _, b in blocks)), 0)
        bsz, m, _ = hidden.shape
        kv = F.linear(hidden, w).view(bsz, m, len(blocks), 2, injection.heads, injection.head_dim)
        return {name: (kv[:, :, j, 0], kv[:, :, j, 1]) for j, (name, _) in enumerate(blocks)}
    return project


@contextlib.contextmanager
def _before(model):
    """The full-logits loss and the indexed memory K/V views, on this model instance."""
    def full_loss(ids, labels, memory=None, attention_mask=None):
        return model(ids, memory=memory, attention_mask=attention_mask, labels=labels).loss
    model.loss = full_loss
    model.injection.project = _indexed_project(model.injection)
    try:
        yield
    finally:
        del model.loss
        del model.injection.project


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="train/configs/smollm2_kjv_ruler.yaml")
    p.add_argument("--hay", default="256,4096", help="haystack tokens, comma-separated")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    try:
        hays = [int(h) for h in args.hay.split(",")]
    except ValueError:
        print(f"--hay {args.hay!r}: give haystack lengths as integers, e.g. 256,4096", file=sys.stderr)
        return 2
    if args.repeats < 1 or args.threads < 1:
        print(f"--repeats {args.repeats} / --threads {args.threads}: both must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    from lcirc_fast.bench.report import write_json
    from lcirc_fast.errors import LCIRCError
    from lcirc_fast.training.config import load_config
    from lcirc_fast.training.trainer import Trainer

    def config(hay: int, out: str):
        return load_config(args.config, [f"output_dir={out}", "init_from=null", "train.eval_every=0",
                                         f"data.hay_schedule=[[{hay}, 0]]"])
    try:            # every length checked before any model is built
        for hay in hays:
            config(hay, "unused")
    except (LCIRCError, FileNotFoundError) as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 2

    variants = {"full logits, indexed K/V views": True, "answer logits, unbound K/V views": False}
    res = {"config": args.config, "threads": args.threads, "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M"), "rows": []}
    for hay in hays:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(config(hay, f"{tmp}/run"), resume="none", quiet=True)
            try:
                model, obj = trainer.model, trainer.objectives
                model.train()
                model.base.eval()
                times: dict = {name: [] for name in variants}
                losses: dict = {name: [] for name in variants}
                for r in range(-1, args.repeats):          # r = -1: warm-up, not recorded
                    for name, before in variants.items():
                        with _before(model) if before else contextlib.nullcontext():
                            t0 = time.perf_counter()
                            loss, _, _ = obj.stage2(r + 1, 0)
                            loss.backward()
                            dt = time.perf_counter() - t0
                        model.zero_grad(set_to_none=True)
                        if r >= 0:
                            times[name].append(dt)
                            losses[name].append(float(loss.detach()))
            finally:
                trainer.close()
        base = statistics.median(times[next(iter(variants))])
        for name in variants:
            med = statistics.median(times[name])
            res["rows"].append({"hay": hay, "variant": name, "median_s": med, "all_s": times[name],
                                "losses": losses[name], "speedup": base / med})
    print(f"stage-2 step (forward + backward), {args.config}, {args.threads} threads")
    print("| hay | variant | median s | all s | speed-up | losses |\n|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['hay']} | {r['variant']} | {r['median_s']:.2f} | "
              f"{', '.join(f'{t:.2f}' for t in r['all_s'])} | {r['speedup']:.2f}x | "
              f"{', '.join(f'{x:.4f}' for x in r['losses'])} |")
    if args.out:
        write_json(Path(args.out), res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
