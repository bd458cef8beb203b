"""Tables, JSON and the PNG plot of a benchmark run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..flops import format_flops


def _fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 1e3:.1f}ms" if x < 1 else f"{x:.2f}s"


def _fmt_b(x: int | None) -> str:
    if x is None:
        return "-"
    for unit, k in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if x >= k:
            return f"{x / k:.1f}{unit}"
    return f"{x}B"


def measured_table(rows: list[dict]) -> str:
    """One line per length: FLOPs (causal-half) and measured latency / memory / decode."""
    cols = [("tokens", 8), ("mem", 5), ("FLOPs LCIRC", 11), ("FLOPs full", 10), ("ratio", 7),
            ("LCIRC", 9), ("full", 9), ("eager ref", 9), ("speedup", 7), ("peak LCIRC", 10),
            ("peak full", 9), ("dec cached", 10), ("dec recomp", 10), ("train", 9),
            ("peak train", 10)]
    head = " ".join(f"{c:>{w}}" for c, w in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        dec_c, dec_r = r.get("decode_cached_tok_s"), r.get("decode_recompute_tok_s")
        vals = [str(r["tokens"]), str(r["memory"]), format_flops(r["flops_lcirc_half"]),
                format_flops(r["flops_full_half"]),
                f"{100 * r['flops_lcirc_half'] / r['flops_full_half']:.1f}%",
                _fmt_s(r["lcirc_s"]), _fmt_s(r["full_s"]), _fmt_s(r.get("reference_s")),
                f"{r['speedup']:.2f}x", _fmt_b(r.get("lcirc_peak_bytes")),
                _fmt_b(r.get("full_peak_bytes")),
                "-" if dec_c is None else f"{dec_c:.1f}/s",
                "-" if dec_r is None else f"{dec_r:.1f}/s",
                _fmt_s(r.get("train_s")), _fmt_b(r.get("train_peak_bytes"))]
        lines.append(" ".join(f"{v:>{w}}" for v, (_, w) in zip(vals, cols)))
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def plot(path: Path, rows: list[dict], title: str, measured: bool = True) -> bool:
    """Left: measured prefill latency; right: analytic FLOPs (both causal conventions).
    False (nothing written) where matplotlib is not installed."""
    from ..plotting import pyplot

    plt = pyplot()
    if plt is None:
        return False
    n = [r["tokens"] for r in rows]
    panels = 2 if measured else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    ax = axes[0][0]
    if measured:
        ax.plot(n, [r["full_s"] for r in rows], "o-", label="full attention (SDPA)")
        ax.plot(n, [r["lcirc_s"] for r in rows], "s-", label="LCIRC (compress + window)")
        if all("reference_s" in r for r in rows):
            ax.plot(n, [r["reference_s"] for r in rows], "^--", label="LCIRC eager reference")
        ax.set(xscale="log", yscale="log", xlabel="context tokens", ylabel="prefill seconds",
               title="measured prefill")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        ax = axes[0][1]
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
