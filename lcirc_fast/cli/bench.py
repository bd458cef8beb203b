"""`lcirc bench`: LCIRC against full attention over the whole context.

Measured sweep on random-weight models (nothing is downloaded) plus the analytic FLOP model;
prints a table and writes bench.json and bench.png under --out.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from ..errors import ConfigError, RunError
from .options import add_backend_option, backend_for_new_models, check_backend

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def parse_lengths(text: str) -> list[int]:
    """'512,1k,128K,1M' -> [512, 1024, 131072, 1048576]; ConfigError on bad items."""
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        mult = {"k": 1024, "m": 1024 * 1024}.get(item[-1], 1)
        num = item[:-1] if mult > 1 else item
        if not num.isdigit():
            raise ConfigError(f"--lengths: {item!r} is not a token count (use e.g. 512,4k,128k)")
        n = int(num) * mult
        if n < 1:
            raise ConfigError(f"--lengths: every length must be >= 1 token, got {item!r}")
        out.append(n)
    if not out:
        raise ConfigError("--lengths is empty")
    return sorted(set(out))


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="benchmark LCIRC against full attention",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="shape preset (cpu-small, smollm2-135m, llama2-7b, tiny) or a Hugging "
                        "Face config.json path (default: cpu-small on CPU, llama2-7b on CUDA)")
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                   help="weights/activations (default: float32 on CPU, bfloat16 on CUDA)")
    p.add_argument("--lengths", default=None,
                   help="comma-separated context lengths, e.g. 512,1k,8k (default: the preset's; "
                        "with --flops-only 4k..1M)")
    p.add_argument("--window", type=int, default=None, help="LLM window (default: the preset's)")
    p.add_argument("--segment-len", type=int, default=None,
                   help="compressor segment length (default: the preset's)")
    p.add_argument("--out", default="out/bench", help="output directory (default: out/bench)")
    p.add_argument("--decode-tokens", type=int, default=8,
                   help="tokens decoded per length for tokens/s (0: skip decoding)")
    p.add_argument("--train-policy", default="selective:8",
                   help="BPTT policy of the training step: full, truncated:k, selective:n")
    p.add_argument("--no-train", action="store_true", help="skip the training step")
    p.add_argument("--no-reference", action="store_true", help="skip the eager reference")
    p.add_argument("--repeats", type=int, default=3,
                   help="minimum timed runs per method and length after an uncounted warm-up "
                        "(short runs get more, up to --max-repeats); the median and min-max "
                        "are reported (default: 3)")
    p.add_argument("--max-repeats", type=int, default=30,
                   help="most timed runs per method and length (default: 30)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: the physical cores this process may use, less "
                        "those other processes keep busy when the run starts)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory measurements (one isolated run per method and "
                        "length)")
    add_backend_option(p)
    p.add_argument("--flops-only", action="store_true",
                   help="analytic FLOP model only (no model is built)")
    return p


def _check_args(args) -> None:
    if args.decode_tokens < 0:
        raise ConfigError(f"--decode-tokens must be >= 0, got {args.decode_tokens}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    if args.max_repeats < args.repeats:
        raise ConfigError(f"--max-repeats ({args.max_repeats}) must be >= --repeats "
                          f"({args.repeats})")
    from ..bptt import spec_from_text

    spec_from_text(args.train_policy, "--train-policy")


def _flops_only(preset, lengths, out: Path) -> int:
    from .. import flops as fl
    from ..bench.report import plot, write_json
    from ..plotting import written

    llm, shape = preset.llm, preset.shape()
    rows = fl.sweep(llm, shape, lengths)
    for r in rows:
        for conv in fl.CAUSAL_CONVENTIONS:
            r[f"flops_lcirc_{conv}"], r[f"flops_full_{conv}"] = (r.pop(f"lcirc_flops_{conv}"),
                                                                 r.pop(f"full_flops_{conv}"))
    lc = shape.config
    print(f"analytic prefill FLOPs, {preset.name}: window {preset.window}, segments "
          f"{lc.segment_len}, K={lc.num_latents}, {lc.compressor_layers} compressor "
          f"layers, {shape.num_gca} GCA blocks")
    print(fl.format_table([{**r, "lcirc_flops_half": r["flops_lcirc_half"],
                            "full_flops_half": r["flops_full_half"],
                            "lcirc_flops_full": r["flops_lcirc_full"],
                            "full_flops_full": r["flops_full_full"]} for r in rows]))
    print("half = causal attention counted as the triangle FlashAttention computes; "
          "full = the whole T x T matrix")
    xo = {c: fl.crossover(llm, shape, c) for c in fl.CAUSAL_CONVENTIONS}
    print(f"FLOP crossover (LCIRC cheaper from): {xo['half']} tokens (half), "
          f"{xo['full']} tokens (full)")
    data = {"mode": "flops-only", "preset": preset.name, "rows": rows, "crossover_flops": xo}
    write_json(out / "bench.json", data)
    drawn = plot(out / "bench.png", rows, f"{preset.name}: analytic FLOPs", measured=False)
    print(f"wrote {out / 'bench.json'} and {written(out / 'bench.png', drawn)}")
    return 0


def _check_out(out: Path) -> None:
    """--out must be a directory, or a path that can be created as one, before anything runs."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory; bench writes "
                                 "bench.json and bench.png into a directory")
    parent = out.absolute()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"--out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: cannot write in {parent} (permission denied)")


def _device(name: str | None):
    """The torch device of --device (default: cuda if available), refusing unknown names."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use cpu or cuda[:i]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but torch sees no CUDA device")
    return device


def run(args) -> int:
    """Errors propagate to the command line's handler (`lcirc_fast.cli.main`)."""
    t_start = time.perf_counter()
    _check_args(args)
    from ..bench.presets import get_preset

    lengths = parse_lengths(args.lengths) if args.lengths else None
    out = Path(args.out)
    _check_out(out)
    if args.flops_only:
        preset = get_preset(args.model or "llama2-7b", args.window, args.segment_len)
        from ..flops import DEFAULT_LENGTHS

        return _flops_only(preset, lengths or DEFAULT_LENGTHS, out)

    import torch

    device = _device(args.device)
    dtype = getattr(torch, DTYPES[args.dtype] if args.dtype else
                    ("bfloat16" if device.type == "cuda" else "float32"))
    preset = get_preset(args.model or ("llama2-7b" if device.type == "cuda" else "cpu-small"),
                        args.window, args.segment_len)
    lengths = lengths or list(preset.lengths)
    preset = preset.replace(lengths=tuple(lengths))    # position table sized for the sweep
    _check_fits(preset, dtype, device)
    check_backend(args.backend, device)

    from tqdm.auto import tqdm

    from .. import flops as fl
    from ..bench.report import flags_text, measured_table, plot, write_json
    from ..bench.sweep import SweepOptions, crossover, run_sweep
    from ..plotting import written

    opts = SweepOptions(lengths=lengths, device=str(device), dtype=dtype,
                        decode_tokens=args.decode_tokens, train=not args.no_train,
                        train_policy=args.train_policy, reference=not args.no_reference,
                        repeats=args.repeats, max_repeats=args.max_repeats,
                        threads=args.threads, memory=not args.no_memory)
    bar = tqdm(desc="lcirc bench", unit="step", file=sys.stderr)

    def tick(msg: str) -> None:
        bar.set_postfix_str(msg)
        bar.update(1)

    try:
        with backend_for_new_models(args.backend):
            res = run_sweep(preset, opts, progress=tick)
    finally:
        bar.close()
    rows, meta, flags = res["rows"], res["meta"], res["flags"]
    shape = preset.shape()
    xo_meas = crossover(rows)
    xo_flops = {c: fl.crossover(preset.llm, shape, c) for c in fl.CAUSAL_CONVENTIONS}
    print(f"\nLCIRC vs full attention: {preset.name} (d={preset.llm.hidden_size}, "
          f"{preset.llm.num_layers} layers), window {preset.window}, segments "
          f"{shape.config.segment_len}, K={shape.config.num_latents}, {device}, {str(dtype).split('.')[-1]}")
    print(_setup_text(meta, device))
    print(measured_table(rows, flags))
    print(f"FLOPs: analytic, causal attention as the half (FlashAttention) triangle. "
          f"Latency: last-token logits; {meta['timing_method']}. Speed-up: full / LCIRC "
          f"medians [worst-best pairing of min and max]. Decode: tokens/s with memory K/V "
          f"cached / recomputed per token. Train: {opts.train_policy} BPTT, forward+backward.")
    if meta.get("memory_method"):
        print(f"Peak memory: {meta['memory_method']}."
              + (f" ({meta['memory_error']})" if meta.get("memory_error") else ""))
    print(f"crossover (LCIRC faster from): measured {xo_meas or 'not reached'}"
          f"{' tokens' if xo_meas else ''}; FLOPs {xo_flops['half']} tokens (half), "
          f"{xo_flops['full']} tokens (full)")
    print(flags_text(flags))
    meta.update(args={k: v for k, v in vars(args).items() if not k.startswith("_")},
                seconds=time.perf_counter() - t_start, date=time.strftime("%Y-%m-%d %H:%M:%S"))
    data = {"mode": "measured", "schema": 2, "meta": meta, "rows": rows, "flags": flags,
            "crossover_measured": xo_meas, "crossover_flops": xo_flops}
    write_json(out / "bench.json", data)
    drawn = plot(out / "bench.png", rows, f"{preset.name} on {device}")
    print(f"wrote {out / 'bench.json'} and {written(out / 'bench.png', drawn)} "
          f"({time.perf_counter() - t_start:.0f}s)")
    return 0


def _setup_text(meta: dict, device) -> str:
    """Threads, competing load and the GEMM rate, as the run saw them."""
    from ..bench.checks import LOAD_LIMIT

    lines = []
    th = meta["threads"]
    if device.type == "cpu":
        where = (f"{th['physical_cores']} physical cores" if th["reason"] == "--threads"
                 else f"{th['cpu_count']} logical CPUs")
        lines.append(f"threads: {th['count']} ({th['reason']}; {where})")
    load = meta.get("load") or {}
    other = load.get("other_cores")
    if other is None:
        lines.append("competing load: not measurable here (no /proc/stat)")
    else:
        busy = other >= LOAD_LIMIT or (load.get("max_other_cores") or 0) >= LOAD_LIMIT
        lines.append(f"competing load: {'YES, ' if busy else 'none; '}other processes used "
                     f"{other:.2f} cores on average while timing (at most "
                     f"{load['max_other_cores']:.2f} during one length; steal "
                     f"{load.get('steal_cores') or 0:.2f}), ours {load.get('own_cores') or 0:.2f}"
                     f"; 1-min load average up to {load.get('loadavg_1m_max')}"
                     + ("; figures below are skewed" if busy else ""))
    g = meta.get("gemm")
    if g:
        m, k, n = g["start"]["shape"]
        lines.append(f"GEMM rate (compressor K/V product, [{m} x {k}] x [{k} x {n}]): "
                     f"{g['start']['flop_s'] / 1e9:.1f} GFLOP/s at the start, "
                     f"{g['end']['flop_s'] / 1e9:.1f} at the end")
    return "\n".join(lines)


def _check_fits(preset, dtype, device) -> None:
    """Refuse (clearly) to build a model that cannot fit in host memory."""
    if device.type != "cpu":
        return
    import torch

    need = preset.llm.params * torch.empty((), dtype=dtype).element_size() * 1.6
    try:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > avail:
        raise RunError(
            f"--model {preset.name} needs about {need / 2**30:.0f} GiB here but only "
            f"{avail / 2**30:.0f} GiB is free; use --flops-only, a smaller preset "
            f"(cpu-small, smollm2-135m) or a GPU")
