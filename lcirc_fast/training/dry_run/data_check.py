"""Check the data a training config names, from the first row of its files (nothing from a hub).

The paper's layouts: FineWeb-Edu-Long rows hold `input_ids` (a list of token ids per document);
FineWeb-LQA rows hold `context` (a list of Llama-2 token ids, or text), `question` and `answer`
(text).
"""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import DataError

LAYOUT_FORMATS = (".jsonl", ".json", ".parquet")


def _first_file(path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in LAYOUT_FORMATS + (".txt",))
        if not files:
            raise FileNotFoundError(f"{p}: no .jsonl/.json/.parquet files in the directory")
        return files[0]
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such data file or directory")
    return p


def first_row(path: str) -> tuple[Path, dict]:
    """(file, its first row as a dict) of a data path; DataError when it has no readable row."""
    f = _first_file(path)
    ext = f.suffix.lower()
    if ext == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(f).iter_batches(batch_size=1):
            rows = batch.to_pylist()
            if rows:
                return f, rows[0]
        raise DataError(f"{f}: the file has no rows")
    if ext == ".jsonl":
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise DataError(f"{f}: the first row is not a JSON object")
                    return f, row
        raise DataError(f"{f}: the file has no rows")
    if ext == ".json":
        rows = json.loads(f.read_text(encoding="utf-8"))
        rows = rows if isinstance(rows, list) else [rows]
        if not rows or not isinstance(rows[0], dict):
            raise DataError(f"{f}: no JSON object rows")
        return f, rows[0]
    return f, {"text": "(plain text)"}


def _is_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) and not isinstance(t, bool)
                                                            for t in value)


def _need(f: Path, row: dict, key: str, ok, what: str) -> None:
    if key not in row:
        raise DataError(f"{f}: no column {key!r} (columns: {sorted(row)}); the layout needs {what}")
    if not ok(row[key]):
        raise DataError(f"{f}: column {key!r} holds {type(row[key]).__name__}, not {what}")


def check_data(cfg) -> list[str]:
    """One line per data path of `cfg.data`, saying what was checked; DataError / FileNotFound
    naming the file and column when a row does not have the layout the source reads."""
    d = cfg.data
    if d.source == "hub":
        return [f"hub dataset {d.hub_name!r} (train / validation): not read in a dry run (no network); "
                f"the run reads {'column ' + repr(d.text_field) if cfg.stage == 1 else 'context, question, answer'}"]
    if d.source in ("kjv", "synthetic_tokens"):
        return [f"{d.source}: built in (nothing to check)"]
    lines = []
    for label, path in (("train", d.train_path), ("validation", d.val_path)):
        if path is None:
            continue
        f, row = first_row(path)
        if d.source == "token_files":
            _need(f, row, d.text_field, _is_ids, "a list of token ids (FineWeb-Edu-Long layout)")
            lines.append(f"{label}: {f} ({d.text_field}: {len(row[d.text_field])} token ids in row 1)")
        elif d.source == "text_files":
            if f.suffix.lower() != ".txt":
                _need(f, row, d.text_field, lambda v: isinstance(v, str), "text")
            lines.append(f"{label}: {f} (text in {d.text_field!r})")
        else:   # qa_files
            _need(f, row, "context", lambda v: _is_ids(v) or isinstance(v, str), "token ids or text")
            for key in ("question", "answer"):
                _need(f, row, key, lambda v: isinstance(v, str) or (isinstance(v, list) and v
                                                                   and isinstance(v[0], str)), "text")
            kind = "token ids" if _is_ids(row["context"]) else "text"
            lines.append(f"{label}: {f} (FineWeb-LQA layout, context as {kind})")
    return lines
