"""`lcirc eval compare A.jsonl B.jsonl`: two models' answers to the same samples (the
predictions.jsonl of `lcirc eval passkey` or `lcirc eval ruler` run with the same seed, lengths
and samples), re-scored from the answers and compared pair by pair: mean difference B - A with
its standard error and a 95% interval, per task and length."""
from __future__ import annotations

import math
from typing import Sequence

from ..errors import DataError
from .passkey import strict_passkey
from .ruler import score_record

CONTROL_MODES = ("base", "full", "lcirc_swapped", "qd_swapped")
_FIELDS = {"passkey": ("mode", "length", "depth", "index", "key", "answer"),
           "ruler": ("task", "mode", "length", "index", "references", "answer")}


def record_score(rec: dict) -> float:
    """The headline score of one prediction record: strict pass key, or RULER's string_match_all."""
    if rec["answer"] is None:
        return 0.0
    if rec["benchmark"] == "passkey":
        return strict_passkey(rec["answer"], rec["key"])
    return score_record(rec)[0]


def _checked(path: str, rows: list[tuple[int, dict]]) -> list[dict]:
    out = []
    for line, r in rows:
        bench = r.get("benchmark")
        if bench not in _FIELDS:
            raise DataError(f"{path}, line {line}: 'benchmark' is {bench!r}, not passkey or ruler; give the "
                            "predictions.jsonl of lcirc eval passkey or ruler")
        missing = [k for k in _FIELDS[bench] if k not in r]
        if missing:
            raise DataError(f"{path}, line {line}: no {', '.join(map(repr, missing))} field")
        out.append(r)
    return out


def pick_mode(path: str, records: list[dict], mode: str | None) -> str:
    """`mode` if the file has it, else the file's one model mode (not base, full or a control)."""
    modes = sorted({r["mode"] for r in records})
    if mode is not None:
        if mode not in modes:
            raise DataError(f"{path}: no answers of mode {mode}; it has {', '.join(modes)}")
        return mode
    model = [m for m in modes if m not in CONTROL_MODES]
    if len(model) != 1:
        raise DataError(f"{path}: {'no' if not model else 'several'} model modes among {', '.join(modes)}; "
                        "name the two with --modes A_MODE,B_MODE")
    return model[0]


def _key(r: dict) -> tuple:
    return (r["benchmark"], r.get("task", "passkey"), r["length"], r.get("depth"), r["index"])


def _gold(r: dict):
    return r["key"] if r["benchmark"] == "passkey" else tuple(r["references"])


def paired_rows(a: list[dict], b: list[dict], a_name: str = "A", b_name: str = "B") -> list[dict]:
    """Per (task, length) and over all pairs: n, mean_a, mean_b, diff (mean of b - a per sample),
    se (standard deviation of the differences / sqrt(n); NaN below 2 pairs), ci95 (diff -+ 1.96 se)
    and b_better / a_better (samples each scored higher). DataError when the two sides do not hold
    the same samples (keys, references) or a sample twice."""
    sides = []
    for recs, name in ((a, a_name), (b, b_name)):
        by = {}
        for r in recs:
            if _key(r) in by:
                raise DataError(f"{name}: sample {_key(r)[1:]} appears twice for mode {r['mode']}")
            by[_key(r)] = r
        sides.append(by)
    if set(sides[0]) != set(sides[1]):
        only = sorted(set(sides[0]) ^ set(sides[1]), key=str)[:3]
        raise DataError(f"{a_name} and {b_name} do not hold the same samples (e.g. {only}); run both with "
                        "the same --seed, --lengths, --samples and tasks")
    diffs: dict = {}
    for k, ra in sides[0].items():
        rb = sides[1][k]
        if _gold(ra) != _gold(rb):
            raise DataError(f"{a_name} and {b_name} differ in the gold answer of sample {k[1:]} "
                            f"({_gold(ra)!r} vs {_gold(rb)!r}): not the same samples; use the same --seed")
        pair = (record_score(ra), record_score(rb))
        diffs.setdefault((k[1], k[2]), []).append(pair)
    groups = list(diffs.items()) + [(("all", "all"), [p for v in diffs.values() for p in v])]
    return [dict(task=t, length=n, **paired_stats(pairs)) for (t, n), pairs in groups]


def paired_stats(pairs: Sequence[tuple[float, float]]) -> dict:
    """n, mean_a, mean_b, diff, se, ci95_low, ci95_high, b_better, a_better of (a, b) score pairs."""
    n = len(pairs)
    d = [b - a for a, b in pairs]
    diff = sum(d) / n
    se = math.sqrt(sum((x - diff) ** 2 for x in d) / (n - 1) / n) if n > 1 else float("nan")
    return {"n": n, "mean_a": sum(a for a, _ in pairs) / n, "mean_b": sum(b for _, b in pairs) / n,
            "diff": diff, "se": se, "ci95_low": diff - 1.96 * se, "ci95_high": diff + 1.96 * se,
            "b_better": sum(x > 0 for x in d), "a_better": sum(x < 0 for x in d)}


def compare_files(path_a: str, path_b: str, modes: Sequence[str] | None = None) -> dict:
    """Read two predictions.jsonl files, keep each one's model mode (or `modes` [a, b]) and return
    {"rows": paired_rows, "meta": files, modes and benchmark}."""
    from ..data.loaders import read_jsonl

    picked, recs = [], []
    for i, path in enumerate((path_a, path_b)):
        records = _checked(path, read_jsonl(path))
        mode = pick_mode(path, records, modes[i] if modes else None)
        picked.append(mode)
        recs.append([r for r in records if r["mode"] == mode])
    benches = {r["benchmark"] for side in recs for r in side}
    if len(benches) != 1:
        raise DataError(f"{path_a} and {path_b} hold different benchmarks ({', '.join(sorted(benches))})")
    rows = paired_rows(recs[0], recs[1], f"{path_a} ({picked[0]})", f"{path_b} ({picked[1]})")
    return {"rows": rows, "meta": {"a": path_a, "b": path_b, "mode_a": picked[0], "mode_b": picked[1],
                                   "benchmark": benches.pop()}}
