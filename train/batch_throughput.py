"""Training throughput of one training config at micro-batch 1 and at train.batch_size B, in one
process, interleaved (B=1, B, B=1, B, ...) so that both see the same machine load.

Each measurement trains on `--samples` samples through the trainer's own step (sampling,
compression, LLM forward and backward, optimizer step): at batch 1 as that many backward calls
with one optimizer step, at batch B as samples / B backward calls (gradient accumulation) with
one optimizer step. Prints one JSON line per measurement and a summary line with the medians.

    OMP_NUM_THREADS=1 python train/batch_throughput.py --config train/configs/smollm2_kjv_passkey_probe.yaml \\
        --batch 8 --samples 8 --repeats 3 --threads 1 --set "data.hay_schedule=[[224,0]]"
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--samples", type=int, default=8, help="samples per measurement (a multiple of --batch)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    if a.batch < 2 or a.samples % a.batch or a.repeats < 1:
        ap.error("--batch must be >= 2, --samples a multiple of it, --repeats >= 1")
    from lcirc_fast.training import Trainer, load_config

    torch.set_num_threads(a.threads)
    out = tempfile.mkdtemp(prefix="lcirc-throughput-")
    cfg = load_config(a.config, [*a.set, f"output_dir={out}", "train.eval_every=0", "train.save_every=0",
                                 "train.grad_accum=1", "train.batch_size=1"])
    tr = Trainer(cfg, resume="none", quiet=True)
    tr.model.train()
    tr.model.base.eval()
    results = {1: [], a.batch: []}
    micro = 0
    try:
        for rep in range(a.repeats):
            for b in (1, a.batch):
                tr.cfg.train.batch_size = b
                tr.engine.accum, tr.engine.micro = a.samples // b, 0
                streams = tr._stage1_iters(0) if cfg.stage == 1 else None
                t0, tokens = time.perf_counter(), 0
                for _ in range(a.samples // b):
                    if cfg.stage == 1:
                        loss, ntok, _ = tr._stage1_micro([next(it) for it in streams])
                    else:
                        loss, ntok, _ = tr._stage2_micro(micro)
                    tr.engine.backward(loss)
                    for m in tr.streams:
                        if m is not None:
                            m.detach_()
                    tr.engine.step()
                    micro += 1
                    tokens += ntok
                dt = time.perf_counter() - t0
                rec = {"repeat": rep, "batch_size": b, "samples": a.samples, "seconds": round(dt, 2),
                       "samples_per_s": round(a.samples / dt, 4), "tokens_per_s": round(tokens / dt, 1)}
                results[b].append(rec)
                print(json.dumps(rec), flush=True)
    finally:
        tr.close()
    med = {b: statistics.median(r["samples_per_s"] for r in v) for b, v in results.items()}
    print(json.dumps({"median_samples_per_s": {str(b): round(v, 4) for b, v in med.items()},
                      "speedup": round(med[a.batch] / med[1], 2),
                      "median_tokens_per_s": {str(b): statistics.median(r["tokens_per_s"] for r in v)
                                              for b, v in results.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
