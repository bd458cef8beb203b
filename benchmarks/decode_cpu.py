"""CPU decoding products: `few_row_linear` against ``F.linear``, and the cost of a second torch
thread (docs/perf/serving.md, run E).

* Products of 1 and 16 rows with the bundled SmolLM2-135M's weight shapes, each shape as 60
  distinct weights (the output matrix once) so they stream from memory; methods interleaved,
  best of 3 rounds.
* 1,000 small ``bmm`` calls (a [4, 144, 576] x [4, 576, 1] product, as in a decoding step) on
  the main thread, then on a second thread after the main thread ran torch at the given thread
  count, and on a second thread of a process whose main thread stays at one thread.

    python benchmarks/decode_cpu.py --threads 2
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

import torch
import torch.nn.functional as F

SHAPES = [(49152, 576, 1), (1536, 576, 60), (576, 1536, 30), (576, 576, 60), (192, 576, 60)]


def best_ms(fn, rounds: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def products(rows: int) -> list[tuple[str, float, float]]:
    from lcirc_fast.ops.cpu_gemm import few_row_linear

    out = []
    with torch.no_grad():
        for o, i, n in SHAPES:
            ws = [torch.randn(o, i) for _ in range(n)]
            x = torch.randn(rows, i)
            a = best_ms(lambda: [F.linear(x, w) for w in ws])
            b = best_ms(lambda: [few_row_linear(x, w, None) for w in ws])
            out.append((f"{o}x{i} x{n}", a, b))
    return out


def bmm_us(threads: int) -> float:
    """Microseconds per small bmm call on the calling thread."""
    torch.set_num_threads(threads)
    ws, x = [torch.randn(4, 144, 576) for _ in range(200)], torch.randn(4, 576, 1)

    def run():
        for _ in range(5):
            for w in ws:
                torch.bmm(w, x)
    return best_ms(run) / 1000 * 1e3


def on_thread(fn, *args):
    out = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    t.join()
    return out[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:                       # main thread at one torch thread, work on a second
        torch.set_num_threads(1)
        print(f"{on_thread(bmm_us, args.threads):.1f}")
        return 0
    torch.set_num_threads(args.threads)
    print("| product | rows | F.linear ms | few_row_linear ms | speed-up |\n|---|---|---|---|---|")
    for rows in (1, 16):
        for name, a, b in products(rows):
            print(f"| {name} | {rows} | {a:.2f} | {b:.2f} | {a / b:.2f}x |")
    main_us = bmm_us(args.threads)
    second = on_thread(bmm_us, args.threads)
    alone = float(subprocess.run([sys.executable, __file__, "--child", "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True).stdout)
    print(f"\nbmm per call: main thread {main_us:.1f} us; a second thread beside the main thread's "
          f"team {second:.1f} us; a second thread, main thread at 1 torch thread {alone:.1f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
