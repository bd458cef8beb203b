"""Loading long documents and QA records through `datasets`: local jsonl / json / parquet / text
files and the paper's layouts (FineWeb-Edu-Long: token ids per document; FineWeb-LQA: context,
question, answer). Hub datasets are used only when a hub is reachable."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

from ..errors import DataError

_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text",
            ".text": "text"}
MAX_LISTED = 5  # bad rows named in an error message; the rest are counted


class MissingColumnError(DataError, KeyError):
    """A column the caller asked for is in none of the rows."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _format_of(files: Sequence[str]) -> str:
    fmts = set()
    for f in files:
        ext = Path(f).suffix.lower()
        if ext not in _FORMATS:
            raise ValueError(f"cannot tell the format of {f!r}; use .jsonl, .json, .parquet or .txt")
        fmts.add(_FORMATS[ext])
    if len(fmts) != 1:
        raise ValueError(f"mixed file formats {sorted(fmts)}; load them separately")
    return fmts.pop()


def _files(path: str | os.PathLike | Sequence[str]) -> list[str]:
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if p.is_dir():
            files = sorted(str(f) for f in p.iterdir() if f.suffix.lower() in _FORMATS)
            if not files:
                raise FileNotFoundError(f"no .jsonl/.json/.parquet/.txt files in {p}")
            return files
        paths = [str(p)]
    else:
        paths = [str(x) for x in path]
    missing = [f for f in paths if not os.path.exists(f)]
    if missing:
        raise FileNotFoundError(f"data files not found: {missing}")
    empty = [f for f in paths if os.path.isfile(f) and os.path.getsize(f) == 0]
    if empty:
        raise DataError(f"{', '.join(empty)}: the file is empty (has no rows)")
    return paths


def _root_message(err: BaseException) -> str:
    """The message of the innermost exception that caused `err`, on one line."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return " ".join(str(err).split()) or type(err).__name__


def refuse_rows(problems: list[tuple[str, str, str]], total: int, what: str) -> None:
    """Raise a DataError naming the first MAX_LISTED bad rows and counting all of them.

    problems: (file, "line N" or "row N", what is wrong) for every bad row; total: rows read."""
    if not problems:
        return
    files = {f for f, _, _ in problems}
    one_file = len(files) == 1
    listed = [f"{where}: {msg}" if one_file else f"{f}, {where}: {msg}" for f, where, msg in problems[:MAX_LISTED]]
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    head = f"{next(iter(files))}: " if one_file else ""
    raise DataError(f"{head}{len(problems)} of {total} {what} cannot be used: {'; '.join(listed)}{more}; "
                    "fix or remove these rows")


def read_jsonl(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line of a JSON Lines file.

    Raises DataError naming each line that is not UTF-8, not valid JSON or not a JSON object,
    and when the file has no rows."""
    rows, problems, n = [], [], 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append((str(path), f"line {n}", f"not UTF-8 text ({e.reason} at byte {e.start})"))
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append((str(path), f"line {n}", f"not valid JSON ({e.msg} at column {e.colno})"))
                continue
            if not isinstance(obj, dict):
                problems.append((str(path), f"line {n}", f"a JSON {type(obj).__name__}, not an object {{...}}"))
                continue
            rows.append((n, obj))
    refuse_rows(problems, len(rows) + len(problems), "lines")
    if not rows:
        raise DataError(f"{path} has no rows ({n} blank lines)")
    return rows


def _numbered_rows(path) -> list[tuple[str, str, dict]]:
    """(file, "line N" / "row N", row) for every row of local files; JSON Lines read line by line."""
    files = _files(path)
    if _format_of(files) == "text":
        raise DataError(f"{', '.join(files)}: plain text has no fields; rows with fields need "
                        ".jsonl, .json or .parquet files")
    out = []
    for f in files:
        if Path(f).suffix.lower() == ".jsonl":
            out += [(f, f"line {n}", r) for n, r in read_jsonl(f)]
        else:
            ds = load_local(f)
            if len(ds) == 0:
                raise DataError(f"{f} has no rows")
            out += [(f, f"row {i + 1}", dict(r)) for i, r in enumerate(ds)]
    return out


def load_local(path, split: str = "train"):
    """A `datasets.Dataset` from local files (text files give one row per whole file).

    A file that cannot be read is a DataError naming it; the messages that `datasets` would log
    about it (e.g. "Failed to read schema ..." for a garbage .parquet) are held back."""
    import datasets
    from datasets.exceptions import DatasetGenerationError
    from datasets.utils import logging as ds_logging
    from pyarrow import ArrowException

    files = _files(path)
    fmt = _format_of(files)
    kwargs = {"sample_by": "document"} if fmt == "text" else {}
    bars_were_off = datasets.is_progress_bar_enabled() is False
    verbosity = ds_logging.get_verbosity()
    datasets.disable_progress_bars()       # a local read is quick; its bar would only be noise
    ds_logging.set_verbosity(ds_logging.CRITICAL + 1)   # its errors are raised as one DataError
    try:
        return datasets.load_dataset(fmt, data_files={split: files}, split=split, **kwargs)
    except (DatasetGenerationError, ArrowException) as e:
        raise DataError(f"cannot read {', '.join(files)} as {fmt}: {_root_message(e)}") from e
    finally:
        ds_logging.set_verbosity(verbosity)
        if not bars_were_off:
            datasets.enable_progress_bars()


def load_hub(name: str, split: str, **kwargs):
    """`datasets.load_dataset(name, split=split)`, with a clear error when offline."""
    import datasets

    try:
        return datasets.load_dataset(name, split=split, **kwargs)
    except Exception as e:  # network / offline errors come in many types
        raise DataError(f"could not load {name!r} split {split!r} from the hub ({e}); download it "
                           "and pass local files instead") from e


def _column(ds, field: str):
    if field not in ds.column_names:
        raise MissingColumnError(f"column {field!r} not in the data (columns: {ds.column_names})")
    return ds[field]


def load_text_documents(path, field: str = "text") -> list[str]:
    """Document texts from local files (`field` for jsonl/parquet; whole files for .txt).

    Raises DataError naming the rows whose `field` is missing, null or not a string."""
    files = _files(path)
    if _format_of(files) == "text":
        return [str(t) for t in _column(load_local(files), field)]
    rows = _numbered_rows(files)
    if not any(field in r for _, _, r in rows):
        raise MissingColumnError(f"{', '.join(files)}: column {field!r} not in the data "
                                 f"(columns: {sorted(rows[0][2])})")
    problems = [(f, where, _text_problem(r, field)) for f, where, r in rows if _text_problem(r, field)]
    refuse_rows(problems, len(rows), "documents")
    return [r[field] for _, _, r in rows]


def _text_problem(row: dict, field: str) -> str | None:
    """What is wrong with `row[field]` as a document text, or None."""
    if field not in row:
        return f"no {field!r} field"
    if row[field] is None:
        return f"{field!r} is null"
    if not isinstance(row[field], str):
        return f"{field!r} is a {type(row[field]).__name__}, not a string"
    return None


def load_token_documents(source, split: str = "train", field: str = "input_ids",
                         hub: bool = False) -> list[torch.Tensor]:
    """FineWeb-Edu-Long layout: one row per document with its token ids (int64 [n] each)."""
    ds = load_hub(source, split) if hub else load_local(source, split)
    return [torch.tensor(list(x), dtype=torch.long) for x in _column(ds, field)]


def load_qa_records(source, split: str = "train", context: str = "context",
                    question: str = "question", answer: str = "answer",
                    hub: bool = False) -> list[dict]:
    """FineWeb-LQA layout: rows with a context, question and answer text.

    A context given as token ids (FineWeb-LQA stores Llama-2 ids, no BOS) is kept as
    "context_ids" (int64 [n]) and "context" is then None; a text context is kept as text."""
    ds = load_hub(source, split) if hub else load_local(source, split)
    cols = [_column(ds, f) for f in (context, question, answer)]
    out = []
    for i, (c, q, a) in enumerate(zip(*cols)):
        if isinstance(a, list):
            a = a[0] if a else ""
        if isinstance(c, (list, tuple)):
            if not all(isinstance(t, int) and not isinstance(t, bool) for t in c):
                raise DataError(f"{source} row {i + 1}: {context!r} is a list but not of token ids; "
                                "give token ids or text")
            out.append({"context": None, "context_ids": torch.tensor(c, dtype=torch.long),
                        "question": str(q), "answer": str(a)})
        else:
            out.append({"context": str(c), "question": str(q), "answer": str(a)})
    return out


def longbench_problems(row: dict) -> list[str]:
    """What is wrong with a LongBench row: `input` and `context` strings (the context not blank),
    `answers` a non-empty list of strings, not all blank; [] when it can be scored."""
    out = [p for p in (_text_problem(row, "input"), _text_problem(row, "context")) if p]
    if isinstance(row.get("context"), str) and not row["context"].strip():
        out.append("'context' is empty (every LongBench task reads one)")
    if "answers" not in row:
        out.append("no 'answers' field")
    elif row["answers"] is None:
        out.append("'answers' is null")
    elif not isinstance(row["answers"], list):
        out.append(f"'answers' is a {type(row['answers']).__name__}, not a list of strings")
    elif not row["answers"]:
        out.append("'answers' is an empty list")
    else:
        kinds = sorted({type(a).__name__ for a in row["answers"] if not isinstance(a, str)})
        if kinds:
            out.append(f"'answers' holds {'/'.join(kinds)} items, not only strings")
        elif not any(a.strip() for a in row["answers"]):
            out.append("'answers' holds only empty strings (nothing to score against)")
    return out


def _row_id(row: dict, index: int) -> str:
    for key in ("_id", "id"):
        if row.get(key) is not None:
            return str(row[key])
    return str(index)


def load_longbench(path) -> list[dict]:
    """LongBench rows (jsonl, json or parquet): input (question), context, answers (list of
    strings), dataset, _id or id.

    Every row is checked first: a DataError names the file and line of each row that cannot
    be scored (up to MAX_LISTED, all counted); none is scored against a made-up answer."""
    rows = _numbered_rows(path)
    problems = []
    for i, (f, where, r) in enumerate(rows):
        bad = longbench_problems(r)
        if bad:
            ident = next((f" (id {r[k]!r})" for k in ("_id", "id") if r.get(k) is not None), "")
            problems.append((f, where + ident, ", ".join(bad)))
    refuse_rows(problems, len(rows), "LongBench rows")
    return [{"id": _row_id(r, i), "input": r["input"], "context": r["context"], "answers": list(r["answers"]),
             "dataset": r.get("dataset") or ""} for i, (_, _, r) in enumerate(rows)]
