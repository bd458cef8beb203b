"""Running scored samples with failures counted (never dropped), and writing results as a
table, JSON and a PNG plot."""
from __future__ import annotations

import json
import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable


@dataclass
class ScoreBoard:
    """Scores of one group (e.g. a task/length/depth/model cell). Failed samples score 0 in
    `score_with_failures` and are excluded from `score`; both are reported."""
    name: str
    scores: list = field(default_factory=list)
    failures: list = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.scores) + len(self.failures)

    @property
    def score(self) -> float:
        return sum(self.scores) / len(self.scores) if self.scores else float("nan")

    @property
    def score_with_failures(self) -> float:
        return sum(self.scores) / self.n if self.n else float("nan")

    def row(self) -> dict:
        return {"name": self.name, "n": self.n, "ok": len(self.scores), "failed": len(self.failures),
                "score": self.score, "score_counting_failures_as_zero": self.score_with_failures}


def run_scored(board: ScoreBoard, samples: Iterable, fn: Callable[[object], float],
               on_error: Callable[[object, BaseException], None] | None = None) -> ScoreBoard:
    """Score every sample with `fn`; an exception records a failure (with its message)."""
    for i, s in enumerate(samples):
        try:
            v = float(fn(s))
            if math.isnan(v):
                raise ValueError("metric returned NaN")
            board.scores.append(v)
        except Exception as e:  # counted, reported, never silently dropped
            board.failures.append({"index": i, "error": repr(e),
                                   "trace": traceback.format_exc(limit=3)})
            if on_error is not None:
                on_error(s, e)
    return board


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of `rows` restricted to `columns`."""
    def fmt(v):
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def write_json(path: str | Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def plot_lines(path: str | Path, series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str,
               title: str, logx: bool = True) -> bool:
    """One line per series of (x, y) points, saved as PNG; False (nothing written) where
    matplotlib is not installed."""
    from ..plotting import pyplot

    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in series.items():
        pts = sorted(p for p in pts if not math.isnan(p[1]))
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def group_cells(records: list[dict], keys: tuple[str, ...]) -> list[list[dict]]:
    """`records` grouped by their values of `keys`, each group (cell) in order of first appearance."""
    cells: dict = {}
    for r in records:
        cells.setdefault(tuple(r[k] for k in keys), []).append(r)
    return list(cells.values())
