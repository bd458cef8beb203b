"""How close compression can come to the GEMM rate: the compressor's products timed alone.

`lcirc bench` reports the compressor's FLOP/s as a fraction of the machine's GEMM rate at the
K/V product's shape. This script times, interleaved in one run with `model.compress` itself and
with that GEMM, each product compression consists of, alone and with its operands hot:

* the K/V product (the GEMM reference itself, scaled to all context rows);
* the latent step's four projections at K rows (weights packed as the compressor uses them);
* the latent attention of K queries over one segment's K/V views.

Their sum, times how often compression runs each, is what a compressor made of these library
calls would take if nothing else cost time (LayerNorms, residual adds, SiLU and the embedding
lookup are left out), so the fraction it gives is an upper bound for such an implementation.
Model, context and FLOP count are `lcirc bench`'s (random weights, its preset and token ids).

    python benchmarks/compressor_ceiling.py --threads 2 --tokens 8192
    python benchmarks/compressor_ceiling.py --threads 1 --tokens 8192 --latents 64 --segment-len 512
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch

from lcirc_fast import flops as fl
from lcirc_fast.bench.presets import get_preset
from lcirc_fast.bench.sweep import build_model, gemm_shape, gemm_workload, sweep_ids
from lcirc_fast.bench.timing import TimingPolicy, Workload, measure


def build(preset_name: str, tokens: int, latents: int | None, segment_len: int | None):
    preset = get_preset(preset_name, segment_len=segment_len)
    if latents is not None:
        preset = preset.replace(lcirc=dict(preset.lcirc, num_latents=latents))
    model = build_model(preset, "cpu", torch.float32)
    ids = sweep_ids(preset, tokens, 0, "cpu")
    ctx = ids[:, : max(0, tokens - preset.window)]
    if ctx.shape[1] == 0:
        raise SystemExit(f"compressor_ceiling: {tokens} tokens fit in the {preset.window}-token "
                         f"window; nothing is compressed (raise --tokens)")
    return preset, model, ctx


def workloads(preset, model, ctx, tokens: int) -> tuple[dict[str, Workload], dict[str, float],
                                                        dict[str, float]]:
    """(workloads, calls per compression, FLOPs per call) for compress, the GEMM and the parts."""
    c = model.compressor
    bounds = model.recurrence.segment_plan(ctx.shape[1], None, None)
    lengths = Counter(b - a for a, b in zip(bounds, bounds[1:]))
    layers = len(c.layers)
    k = model.config.num_latents
    gen = torch.Generator().manual_seed(1)
    work: dict[str, Workload] = {}
    calls: dict[str, float] = {}
    flop: dict[str, float] = {}

    def compress():
        with torch.no_grad():
            return model.compress(ctx)

    work["compress"], calls["compress"] = Workload(compress), 1
    flop["compress"] = fl.compress(preset.shape(), ctx.shape[1], wbytes=4).matmul

    rows, d, n = gemm_shape(model, preset, tokens)
    name = f"K/V product [{rows} x {d}] x [{d} x {n}] (GEMM reference)"
    work[name] = gemm_workload((rows, d, n), "cpu", torch.float32)
    calls[name], flop[name] = ctx.shape[1] / rows, 2 * rows * d * n

    attn, ff = c.layers[0].attn, c.layers[0].ff
    inner, hidden = attn.to_q.out_features, ff.w1.out_features
    for label, lin, width in (("to_q", attn.to_q, c.dim), ("to_out", attn.to_out, inner),
                              ("FFN w1", ff.w1, c.dim), ("FFN w2", ff.w2, hidden)):
        xin = torch.randn(1, k, width, generator=gen)
        name = f"{label} [{k} x {width}] x [{width} x {lin.out_features}]"
        work[name] = Workload(lambda lin=lin, xin=xin: _no_grad(lin, xin))
        calls[name], flop[name] = (len(bounds) - 1) * layers, 2 * k * width * lin.out_features

    emb = model.inputs(ctx[:, :max(lengths)])
    for length, segs in sorted(lengths.items()):
        with torch.no_grad():
            kv = c.segment_kv(emb[:, :length])[0]          # views, laid out as compress has them
        q = torch.randn(1, k, c.heads, c.head_dim, generator=gen)
        name = f"latent attention [{k} queries x {length} keys]"
        work[name] = Workload(lambda q=q, kv=kv: _no_grad(attn.ops.cross_attention, q, *kv))
        calls[name] = segs * layers
        flop[name] = 4 * k * length * c.heads * c.head_dim
    return work, calls, flop


def _no_grad(fn, *args):
    with torch.no_grad():
        return fn(*args)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cpu-small", help="`lcirc bench` preset (default cpu-small)")
    ap.add_argument("--tokens", type=int, default=8192, help="context tokens, window included")
    ap.add_argument("--latents", type=int, default=None, help="K (default: the preset's)")
    ap.add_argument("--segment-len", type=int, default=None, help="default: the preset's")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5, help="least timed runs per workload")
    args = ap.parse_args(argv)
    for flag, v in (("--tokens", args.tokens), ("--threads", args.threads),
                    ("--repeats", args.repeats), ("--latents", args.latents),
                    ("--segment-len", args.segment_len)):
        if v is not None and v < 1:
            print(f"compressor_ceiling: {flag} must be >= 1, got {v}", file=sys.stderr)
            return 2
    try:
        preset, model, ctx = build(args.model, args.tokens, args.latents, args.segment_len)
    except ValueError as exc:
        print(f"compressor_ceiling: {exc}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    work, calls, flop = workloads(preset, model, ctx, args.tokens)
    res = measure(work, TimingPolicy(min_repeats=args.repeats, max_repeats=max(30, args.repeats),
                                     warmup_s=0.2, target_s=0.5)).stats()
    report(model, ctx, args, res, calls, flop)
    return 0


def report(model, ctx, args, res, calls, flop) -> None:
    """Print the table: every part, their sum (the ceiling) and compress, against the GEMM."""
    names = [n for n in res if n != "compress"]
    gemm = next(n for n in names if n.startswith("K/V product"))
    rate = flop[gemm] / res[gemm]["median"]
    c = model.compressor
    segs = len(model.recurrence.segment_plan(ctx.shape[1], None, None)) - 1
    print(f"torch {torch.__version__}, {args.threads} thread(s), fp32; {args.model}: "
          f"{ctx.shape[1]} context tokens compressed ({args.tokens} with the window) in {segs} "
          f"segments, K = {model.config.num_latents}, {len(c.layers)} layers")
    print(f"{'part':52s} {'calls':>7s} {'each, median (min-max)':>27s} {'total':>9s} "
          f"{'GFLOP/s':>8s} {'of GEMM':>7s}")
    total = 0.0
    for n in names:
        st = res[n]
        t = st["median"] * calls[n]
        total += t
        r = flop[n] / st["median"]
        print(f"{n:52s} {calls[n]:7.1f} {_ms(st['median']):>9s} ({_ms(st['min'])}-{_ms(st['max'])})"
              f" {_ms(t):>9s} {r / 1e9:8.1f} {r / rate:7.2f}")
    comp = res["compress"]
    measured = flop["compress"] / comp["median"] / rate
    ceiling = flop["compress"] / total / rate
    print(f"{'sum of the parts':52s} {'':7s} {'':>27s} {_ms(total):>9s} "
          f"{flop['compress'] / total / 1e9:8.1f} {ceiling:7.2f}")
    print(f"{'compress (measured)':52s} {1:7d} {_ms(comp['median']):>9s} "
          f"({_ms(comp['min'])}-{_ms(comp['max'])}) {_ms(comp['median']):>9s} "
          f"{flop['compress'] / comp['median'] / 1e9:8.1f} {measured:7.2f}")
    counted = sum(flop[n] * calls[n] for n in names) / flop["compress"]
    print(f"compressor FLOPs {flop['compress'] / 1e9:.2f} G (lcirc bench's count; the parts "
          f"hold {counted:.4f} of it); GEMM rate "
          f"{rate / 1e9:.1f} GFLOP/s; fraction of it: measured {measured:.2f}, ceiling of the "
          f"parts {ceiling:.2f} (LayerNorms, residual adds, SiLU and the embedding lookup "
          f"not counted)")


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f}ms" if s < 0.01 else f"{s * 1e3:.1f}ms"


if __name__ == "__main__":
    raise SystemExit(main())
