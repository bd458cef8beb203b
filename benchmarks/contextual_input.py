"""The contextual compressor input (`lcirc.compressor_input_layers`) exact against under bfloat16
autocast (`lcirc.compressor_input_autocast`): time of one pass over a training batch's segments,
side by side (alternating), and the relative error of the autocast input.

    python benchmarks/contextual_input.py --batch 8 --tokens 4096 --segment-len 32 --layers 6 --threads 2

SmolLM2-135M (bundled) with fresh LCIRC weights; token ids from the KJV text. Prints a table and,
with --out, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--tokens", type=int, default=4096, help="context tokens per sample")
    p.add_argument("--segment-len", type=int, default=32)
    p.add_argument("--layers", type=int, default=6, help="compressor_input_layers")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.tokens % args.segment_len:
        print(f"--tokens {args.tokens} is not a multiple of --segment-len {args.segment_len}",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    from lcirc_fast import LCIRCConfig
    from lcirc_fast.assets import kjv_text, load_smollm2
    from lcirc_fast.models import LCIRCForCausalLM

    base, tok = load_smollm2(torch.float32)
    n = args.batch * args.tokens
    ids = tok(kjv_text()[: n * 8], add_special_tokens=False).input_ids[:n]
    ids = torch.tensor(ids).reshape(args.batch, args.tokens // args.segment_len, args.segment_len)
    models = {}
    for name, autocast in (("exact", None), ("bfloat16 autocast", "bfloat16")):
        cfg = LCIRCConfig(num_latents=32, compressor_layers=2, max_segment_len=128,
                          segment_len=args.segment_len, compressor_input_layers=args.layers,
                          compressor_input_autocast=autocast)
        models[name] = LCIRCForCausalLM.from_base(base, cfg)
    outs, times = {}, {name: [] for name in models}
    for name, m in models.items():                 # warm-up on a slice
        m.segment_inputs(ids[:, :2])
    for _ in range(args.repeats):                  # alternating, so drift hits both alike
        for name, m in models.items():
            t0 = time.perf_counter()
            outs[name] = m.segment_inputs(ids)
            times[name].append(time.perf_counter() - t0)
    ref = outs["exact"]
    res = {"batch": args.batch, "tokens": args.tokens, "segment_len": args.segment_len,
           "layers": args.layers, "threads": args.threads, "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
           "date": time.strftime("%Y-%m-%d %H:%M"), "rows": []}
    for name in models:
        err = float((outs[name] - ref).norm() / ref.norm())
        res["rows"].append({"input": name, "median_s": statistics.median(times[name]),
                            "all_s": times[name], "rel_error": err})
    res["speedup"] = res["rows"][0]["median_s"] / res["rows"][1]["median_s"]
    print(f"contextual input, {args.layers} layers, {args.batch} x {args.tokens} tokens in "
          f"segments of {args.segment_len}, {args.threads} threads")
    print("| input | median s | all s | relative error |\n|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['input']} | {r['median_s']:.2f} | {', '.join(f'{t:.2f}' for t in r['all_s'])} "
              f"| {r['rel_error']:.4f} |")
    print(f"speed-up: {res['speedup']:.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
