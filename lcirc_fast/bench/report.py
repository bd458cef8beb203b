"""Tables, JSON and the PNG plot of a benchmark run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..flops import format_flops
from .checks import flagged


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    if x < 1e-3:
        return f"{x * 1e6:.0f}us"
    return f"{x * 1e3:.1f}ms" if x < 1 else f"{x:.2f}s"


def _fmt_b(x: int | None) -> str:
    if x is None:
        return "-"
    for unit, k in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if x >= k:
            return f"{x / k:.1f}{unit}"
    return f"{x}B"


def _range(st: dict | None) -> str:
    """'412.0ms [398.1-430.2]': median [min-max]."""
    if not st:
        return "-"
    return f"{_fmt_s(st['median'])} [{_fmt_s(st['min'])}-{_fmt_s(st['max'])}]"


def _table(cols: list[tuple[str, int]], rows: list[list[str]]) -> list[str]:
    widths = [max(w, len(c), *(len(r[i]) for r in rows)) for i, (c, w) in enumerate(cols)]
    head = " ".join(f"{c:>{w}}" for (c, _), w in zip(cols, widths))
    return [head, "-" * len(head)] + [" ".join(f"{v:>{w}}" for v, w in zip(r, widths))
                                      for r in rows]


def _cell(r: dict, method: str, flags: list[dict]) -> str:
    st = r.get("timing", {}).get(method)
    text = _range(st)
    return text + ("!" if st and flagged(flags, r["tokens"], method) else "")


def measured_table(rows: list[dict], flags: list[dict] | None = None) -> str:
    """Three blocks per run: prefill latency (median [min-max]) and speed-up; where the time
    goes (compression, window forward, decode) with the compressor's share of the GEMM rate;
    decoding, training and peak memory. Cells with a self-check flag end in '!'."""
    flags = flags or []
    lines = ["prefill (median [min-max] of timed runs)"]
    body = []
    for r in rows:
        lo, hi = r.get("speedup_range", [r["speedup"], r["speedup"]])
        body.append([str(r["tokens"]), str(r["memory"]), format_flops(r["flops_lcirc_half"]),
                     format_flops(r["flops_full_half"]), _cell(r, "full", flags),
                     _cell(r, "lcirc", flags), _cell(r, "reference", flags),
                     f"{r['speedup']:.2f}x [{lo:.2f}-{hi:.2f}]",
                     str(r.get("timing", {}).get("full", {}).get("n", "-"))])
    lines += _table([("tokens", 6), ("mem", 4), ("FLOPs LCIRC", 11), ("FLOPs full", 10),
                     ("full attention", 14), ("LCIRC", 10), ("eager ref", 10),
                     ("speed-up", 8), ("runs", 4)], body)
    body = []
    for r in rows:
        b, c = r.get("breakdown"), r.get("compressor") or {}
        if not b:
            continue
        sh = b["share"]
        frac = c.get("gemm_fraction")
        body.append([str(r["tokens"]), _cell(r, "compress", flags), _cell(r, "window", flags),
                     _cell(r, "decode_cached", flags) if "decode" in sh else "-",
                     " / ".join(f"{100 * sh.get(k, 0):.0f}%" for k in ("compress", "window",
                                                                       "decode")),
                     f"{c['flop_s'] / 1e9:.1f}G" if c.get("flop_s") else "-",
                     "-" if frac is None else f"{frac:.2f}" + ("!" if flagged(
                         flags, r["tokens"], "compress") and frac > 1 else "")])
    if body:
        dec = next((r["breakdown"]["decode_tokens"] for r in rows if r.get("breakdown")), 0)
        lines += ["", f"where the time goes (compress + window forward + decode of {dec} "
                      f"tokens; compressor FLOP/s and its fraction of the GEMM rate)"]
        lines += _table([("tokens", 6), ("compress", 10), ("window fwd", 10),
                         (f"decode {dec} tok", 10), ("share c/w/d", 11), ("comp FLOP/s", 11),
                         ("of GEMM", 7)], body)
    body = []
    for r in rows:
        dc, dr = r.get("decode_cached_tok_s"), r.get("decode_recompute_tok_s")
        body.append([str(r["tokens"]), "-" if dc is None else f"{dc:.1f}/s",
                     "-" if dr is None else f"{dr:.1f}/s", _cell(r, "train", flags),
                     _fmt_b(r.get("full_peak_bytes")), _fmt_b(r.get("lcirc_peak_bytes")),
                     _fmt_b(r.get("reference_peak_bytes")), _fmt_b(r.get("train_peak_bytes"))])
    lines += ["", "decoding, training step and peak memory (growth during one isolated run)"]
    lines += _table([("tokens", 6), ("dec cached", 10), ("dec recomp", 10), ("train", 10),
                     ("peak full", 9), ("peak LCIRC", 10), ("peak ref", 8),
                     ("peak train", 10)], body)
    return "\n".join(lines)


def flags_text(flags: list[dict]) -> str:
    if not flags:
        return "self-check: no contradictory figures (no falling times, spreads <= 30%, no " \
               "competing load)"
    return "\n".join([f"self-check: {len(flags)} flag(s), marked '!' above:"]
                     + [f"  ! {f['message']}" for f in flags])


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _errorbar(ax, n, rows, method, fmt, label):
    pts = [(x, r["timing"][method]) for x, r in zip(n, rows)
           if method in r.get("timing", {})]
    if not pts:
        return
    xs = [p[0] for p in pts]
    med = [p[1]["median"] for p in pts]
    err = [[m - p[1]["min"] for m, p in zip(med, pts)], [p[1]["max"] - m for m, p in zip(med, pts)]]
    ax.errorbar(xs, med, yerr=err, fmt=fmt, capsize=3, label=label)


def plot(path: Path, rows: list[dict], title: str, measured: bool = True) -> bool:
    """Measured runs: prefill latency (median, min-max error bars), where the time goes per
    length with the compressor's fraction of the GEMM rate, analytic FLOPs. FLOPs only: the
    last panel. False (nothing written) where matplotlib is not installed."""
    from ..plotting import pyplot

    plt = pyplot()
    if plt is None:
        return False
    n = [r["tokens"] for r in rows]
    panels = 3 if measured else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.4), squeeze=False)
    if measured:
        ax = axes[0][0]
        _errorbar(ax, n, rows, "full", "o-", "full attention (SDPA)")
        _errorbar(ax, n, rows, "lcirc", "s-", "LCIRC (compress + window)")
        _errorbar(ax, n, rows, "reference", "^--", "LCIRC eager reference")
        ax.set(xscale="log", yscale="log", xlabel="context tokens", ylabel="prefill seconds",
               title="measured prefill (median, min-max)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[0][1]
        br = [(r["tokens"], r["breakdown"]["seconds"], (r.get("compressor") or {})
               .get("gemm_fraction")) for r in rows if r.get("breakdown")]
        if br:
            pos = list(range(len(br)))
            bottom = [0.0] * len(br)
            for part, color in (("compress", "tab:blue"), ("window", "tab:orange"),
                                ("decode", "tab:green")):
                vals = [b[1].get(part, 0.0) for b in br]
                ax.bar(pos, vals, bottom=bottom, color=color, label=part)
                bottom = [a + v for a, v in zip(bottom, vals)]
            ax.set_xticks(pos, [str(b[0]) for b in br])
            ax.set(xlabel="context tokens", ylabel="seconds (medians)",
                   title="where the time goes")
            ax.legend(fontsize=8, loc="upper left")
            fr = [(p, b[2]) for p, b in zip(pos, br) if b[2] is not None]
            if fr:
                tw = ax.twinx()
                tw.plot([p for p, _ in fr], [f for _, f in fr], "kD-",
                        label="compressor / GEMM rate")
                tw.set_ylim(0, max(1.1, max(f for _, f in fr) * 1.1))
                tw.set_ylabel("fraction of GEMM rate")
                tw.legend(fontsize=8, loc="upper right")
        ax = axes[0][2]
    else:
        ax = axes[0][0]
    for conv, style in (("half", "-"), ("full", ":")):
        ax.plot(n, [r[f"flops_full_{conv}"] for r in rows], "o" + style,
                label=f"full attention ({conv} causal matrix)")
        ax.plot(n, [r[f"flops_lcirc_{conv}"] for r in rows], "s" + style,
                label=f"LCIRC ({conv} causal matrix)")
    ax.set(xscale="log", yscale="log", xlabel="context tokens", ylabel="FLOPs",
           title="analytic prefill FLOPs")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
