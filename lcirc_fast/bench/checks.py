"""Self-check of a measured sweep: figures that contradict each other are flagged, not hidden.

Each flag is a dict {"kind", "message"} plus "tokens" / "method" where it concerns one cell:
    * falls_with_length: the median time of a method whose work grows with the context (full
      attention, LCIRC, compression, the eager reference, training) is lower at a longer length;
    * spread: (max - min) / median of a method's timed runs exceeds SPREAD_LIMIT;
    * competing_load: other processes (or the hypervisor) used >= LOAD_LIMIT cores while a
      length was timed;
    * gemm_drift: the GEMM rate measured at the start and the end differ by > SPREAD_LIMIT;
    * above_gemm_rate: the compressor ran faster than the GEMM it is made of allows;
    * no_memory: a peak-memory figure is missing or 0 B for a method that allocates.
"""
from __future__ import annotations

from typing import Any

SPREAD_LIMIT = 0.30
LOAD_LIMIT = 0.25
ABOVE_GEMM_LIMIT = 1.05
#: methods whose time must grow with the context length
GROWING = ("full", "lcirc", "compress", "reference", "train")
MEMORY_METHODS = ("full", "lcirc", "reference", "train")


def self_check(rows: list[dict], meta: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Flags (see the module doc) for measured rows (each with "timing": method -> stats)."""
    meta = meta or {}
    flags: list[dict[str, Any]] = []
    for method in GROWING:
        seen = [(r["tokens"], r["timing"][method]["median"]) for r in rows
                if method in r.get("timing", {})]
        for (n0, t0), (n1, t1) in zip(seen, seen[1:]):
            if t1 < t0:
                flags.append({"kind": "falls_with_length", "method": method, "tokens": n1,
                              "message": f"{method} time falls with length: {_s(t0)} at {n0} "
                                         f"tokens, {_s(t1)} at {n1}"})
    for r in rows:
        for method, st in r.get("timing", {}).items():
            if st.get("spread", 0.0) > SPREAD_LIMIT:
                flags.append({"kind": "spread", "method": method, "tokens": r["tokens"],
                              "value": st["spread"],
                              "message": f"{method} at {r['tokens']} tokens: spread "
                                         f"{100 * st['spread']:.0f}% of the median "
                                         f"({_s(st['min'])}-{_s(st['max'])}, n={st['n']})"})
        other = (r.get("load") or {}).get("other_cores")
        if other is not None and other >= LOAD_LIMIT:
            flags.append({"kind": "competing_load", "tokens": r["tokens"], "value": other,
                          "message": f"{r['tokens']} tokens: other processes used {other:.2f} "
                                     f"cores while it was timed"})
        comp = r.get("compressor") or {}
        frac = comp.get("gemm_fraction")
        if frac is not None and frac > ABOVE_GEMM_LIMIT:
            flags.append({"kind": "above_gemm_rate", "method": "compress", "tokens": r["tokens"],
                          "value": frac,
                          "message": f"compressor at {r['tokens']} tokens ran at {frac:.2f}x "
                                     f"the measured GEMM rate (the GEMM figure is too low)"})
        if meta.get("memory_method"):
            for method in MEMORY_METHODS:
                if method not in r.get("timing", {}):
                    continue
                got = r.get(f"{method}_peak_bytes")
                if not got:
                    flags.append({"kind": "no_memory", "method": method, "tokens": r["tokens"],
                                  "message": f"{method} at {r['tokens']} tokens: peak memory "
                                             f"{'not measured' if got is None else '0 B'}"})
    gemm = meta.get("gemm") or {}
    if "start" in gemm and "end" in gemm:
        a, b = gemm["start"]["flop_s"], gemm["end"]["flop_s"]
        drift = abs(a - b) / max(a, b)
        if drift > SPREAD_LIMIT:
            flags.append({"kind": "gemm_drift", "value": drift,
                          "message": f"GEMM rate {a / 1e9:.0f} GFLOP/s at the start, "
                                     f"{b / 1e9:.0f} at the end"})
    return flags


def flagged(flags: list[dict], tokens: int, method: str) -> bool:
    """Whether a cell (length, method) carries a flag."""
    return any(f.get("tokens") == tokens and f.get("method") == method for f in flags)


def _s(x: float) -> str:
    return f"{x * 1e3:.1f}ms" if x < 1 else f"{x:.2f}s"
