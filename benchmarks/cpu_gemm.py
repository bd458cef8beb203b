"""The two CPU products of compression, timed with and without this package's CPU measures.

* Latent-step projections (K rows, the same weight every segment): ``F.linear`` against
  `lcirc_fast.ops.cpu_gemm.packed_linear` (a weight packed once for MKL).
* The hoisted K/V product ([rows x d] x [d x layers*2*inner] plus bias): a fresh output every
  call (``F.linear``) against one reused output (``torch.addmm(..., out=)``, as
  `lcirc_fast.models.recurrence.KVWorkspace` does), and the plain product into a reused output
  (the GEMM rate `lcirc bench` compares the compressor with).

Methods of one shape are interleaved round by round; the table gives the median (min-max) of
the rounds and the ratio to the first method. Shapes default to SmolLM2-135M's width (d 576,
9 heads x 64, FFN 1536, 4 layers).

    python benchmarks/cpu_gemm.py --threads 2 --rows 8,64 --kv-rows 4096
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from lcirc_fast.ops.cpu_gemm import PackCache, mkl_packing_available, packed_linear


def interleaved(methods: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of every method, one call each per round, the order rotated."""
    for fn in methods.values():          # warm-up (packs the weights, faults in the buffers)
        fn()
    names = list(methods)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t = time.perf_counter()
            methods[n]()
            times[n].append(time.perf_counter() - t)
    return times


def report(title: str, times: dict[str, list[float]], flops: float) -> None:
    print(title)
    first = None
    for name, v in times.items():
        med = statistics.median(v)
        first = first or med
        print(f"  {name:34s} {med * 1e3:9.3f} ms ({min(v) * 1e3:8.3f}-{max(v) * 1e3:8.3f})  "
              f"{flops / med / 1e9:7.1f} GFLOP/s  x{first / med:5.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--inner", type=int, default=576, help="heads x head_dim")
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rows", default="8,64", help="latent rows per call (B x K), comma-separated")
    ap.add_argument("--kv-rows", default="4096", help="rows of the K/V product, comma-separated")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--kv-rounds", type=int, default=7)
    args = ap.parse_args(argv)
    if not mkl_packing_available():
        print("cpu_gemm: this torch build has no MKL packed GEMM; nothing to compare",
              file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {args.threads} thread(s), fp32")
    d, inner, f = args.dim, args.inner, args.ffn
    with torch.no_grad():
        for rows in (int(r) for r in args.rows.split(",")):
            for name, k_in, n_out in (("to_q", d, inner), ("to_out", inner, d),
                                      ("FFN w1", d, f), ("FFN w2", f, d)):
                w = torch.randn(n_out, k_in) / k_in ** 0.5
                x = torch.randn(rows, k_in)
                cache = PackCache()
                ref = F.linear(x, w)
                got = packed_linear(x, w, None, cache)
                diff = float((got - ref).abs().max())
                times = interleaved({"F.linear": lambda: F.linear(x, w),
                                     "packed_linear": lambda: packed_linear(x, w, None, cache)},
                                    args.rounds)
                report(f"{name}: [{rows} x {k_in}] x [{k_in} x {n_out}] (max |diff| {diff:.1e})",
                       times,
                       2 * rows * k_in * n_out)
        n = args.layers * 2 * inner
        for rows in (int(r) for r in args.kv_rows.split(",")):
            x = torch.randn(rows, d)
            w = torch.randn(n, d) / d ** 0.5
            b = torch.randn(n)
            buf = torch.empty(rows, n)
            times = interleaved({
                "F.linear (fresh output)": lambda: F.linear(x, w, b),
                "addmm into a reused output": lambda: torch.addmm(b, x, w.t(), out=buf),
                "mm into a reused output (no bias)": lambda: torch.mm(x, w.t(), out=buf),
            }, args.kv_rounds)
            report(f"K/V product [{rows} x {d}] x [{d} x {n}]", times, 2 * rows * d * n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
