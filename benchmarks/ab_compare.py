"""Time the same LCIRC workload from two checkouts of lcirc_fast, interleaved, in one run.

Each measurement runs in a fresh process whose ``sys.path`` starts with one checkout, builds the
same seeded model (SmolLM2-135M's width and heads, 4 layers, random weights, fp32) through the
public API both versions share (`LCIRCForCausalLM.from_base`, `compress`, `forward`,
`generate`), and times, after one warm-up: compressing a context, a window forward over the
memory, and cached greedy decoding, each `--repeats` times (the process's figure is their
median). Rounds run A, B then B, A, ... so drifting machine load hits both alike; the table
gives each one's median (min-max) over the processes and the ratio B / A. Every run's memory is
compared with the first A run's: bit for bit (sha256), and otherwise by its largest difference
relative to the memory's largest magnitude; a difference above `--tolerance` exits 1.

    python benchmarks/ab_compare.py --a /path/to/old/checkout --b . --tokens 4096 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

WORKER = r"""
import hashlib, json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
torch.set_num_threads(int(sys.argv[2]))
from transformers import LlamaConfig, LlamaForCausalLM
import os
import lcirc_fast
if not os.path.abspath(lcirc_fast.__file__).startswith(os.path.join(sys.argv[1], "")):
    sys.exit(f"lcirc_fast was imported from {lcirc_fast.__file__}, not from {sys.argv[1]}")
from lcirc_fast import LCIRCConfig, LCIRCForCausalLM
tokens, window, new = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
repeats, dump = int(sys.argv[6]), sys.argv[7]
cfg = LlamaConfig(vocab_size=8192, hidden_size=576, intermediate_size=1536, num_hidden_layers=4,
                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                  tie_word_embeddings=True)
torch.manual_seed(0)
base = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa").eval()
model = LCIRCForCausalLM.from_base(base, LCIRCConfig(num_latents=64, compressor_layers=4,
                                                     segment_len=512, max_segment_len=1024,
                                                     backend="torch"))
g = torch.Generator().manual_seed(1)
ctx = torch.randint(0, 8192, (1, tokens), generator=g)
win = torch.randint(0, 8192, (1, window), generator=g)
times = {"compress_s": [], "window_s": [], "decode_s": []}
with torch.no_grad():
    for rep in range(1 + repeats):                         # the first round is the warm-up
        t = time.perf_counter(); mem = model.compress(ctx); c = time.perf_counter() - t
        t = time.perf_counter(); model(win, memory=mem); f = time.perf_counter() - t
        t = time.perf_counter(); model.generate(win[:, :64], memory=mem, max_new_tokens=new)
        d = time.perf_counter() - t
        if rep:
            for key, val in zip(times, (c, f, d)):
                times[key].append(val)
    h = mem.hidden.detach().to(torch.float32).contiguous()
    h.numpy().tofile(dump)
    out = {key: sorted(v)[len(v) // 2] for key, v in times.items()}
    out.update(samples=times, file=lcirc_fast.__file__,
               memory_sha256=hashlib.sha256(h.view(torch.uint8).numpy().tobytes()).hexdigest())
print(json.dumps(out))
"""

METRICS = ("compress_s", "window_s", "decode_s")


def run_one(checkout: str, args, dump: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", WORKER, os.path.abspath(checkout),
                           str(args.threads), str(args.tokens), str(args.window),
                           str(args.new_tokens), str(args.repeats), dump],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"ab_compare: the run in {checkout} failed: "
                         f"{proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["memory"] = np.fromfile(dump, dtype=np.float32)
    return out


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |a| (inf when the shapes differ)."""
    if a.shape != b.shape:
        return float("inf")
    scale = float(np.abs(a).max()) or 1.0
    return float(np.abs(a.astype(np.float64) - b).max()) / scale


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="checkout A (the repository root)")
    ap.add_argument("--b", required=True, help="checkout B")
    ap.add_argument("--tokens", type=int, default=4096, help="context tokens compressed")
    ap.add_argument("--window", type=int, default=512, help="window tokens read over the memory")
    ap.add_argument("--new-tokens", type=int, default=16, help="greedy tokens decoded")
    ap.add_argument("--rounds", type=int, default=5, help="A/B pairs (each a fresh process)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed repeats per process after the warm-up (their median counts)")
    ap.add_argument("--tolerance", type=float, default=1e-5,
                    help="largest memory difference accepted, relative to its largest value")
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.rounds < 1:
        ap.error("--repeats and --rounds must be >= 1")
    runs: dict[str, list[dict]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        dump = os.path.join(tmp, "memory.f32")
        for r in range(args.rounds):
            for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
                runs[name].append(run_one(getattr(args, name.lower()), args, dump))
    for name in ("A", "B"):
        print(f"{name}: {runs[name][0]['file']}")
    ref = runs["A"][0]["memory"]
    digests = {r["memory_sha256"] for name in ("A", "B") for r in runs[name]}
    worst = max(relative_difference(ref, r["memory"]) for name in ("A", "B") for r in runs[name])
    same = worst <= args.tolerance
    if len(digests) == 1:
        print(f"same memory from both, bit for bit (sha256 {sorted(digests)[0][:16]}...)")
    else:
        print(f"memories differ in their bits; largest difference {worst:.2e} of the largest "
              f"value (tolerance {args.tolerance:g})")
    print(f"{'':10s} {'A median (min-max)':>26s} {'B median (min-max)':>26s} {'B / A':>7s}")
    for m in METRICS:
        cols = []
        for name in ("A", "B"):
            v = [x[m] * 1e3 for x in runs[name]]
            cols.append((statistics.median(v), min(v), max(v)))
        (a, a0, a1), (b, b0, b1) = cols
        print(f"{m[:-2]:10s} {a:9.1f} ms ({a0:6.1f}-{a1:6.1f}) {b:9.1f} ms ({b0:6.1f}-{b1:6.1f}) "
              f"{b / a:7.3f}")
    if args.json:
        for name in ("A", "B"):
            for r in runs[name]:
                r.pop("memory")
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=2)
    if not same:
        print(f"ab_compare: the two checkouts compress the context to different memories "
              f"(largest difference {worst:.2e} of the largest value)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
