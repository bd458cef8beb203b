"""Loading long documents and QA records through `datasets`: local jsonl / json / parquet / text
files and the paper's layouts (FineWeb-Edu-Long: token ids per document; FineWeb-LQA: context,
question, answer). Hub datasets are used only when a hub is reachable."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text",
            ".text": "text"}


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
    return paths


def load_local(path, split: str = "train"):
    """A `datasets.Dataset` from local files (text files give one row per whole file)."""
    import datasets

    files = _files(path)
    fmt = _format_of(files)
    kwargs = {"sample_by": "document"} if fmt == "text" else {}
    return datasets.load_dataset(fmt, data_files={split: files}, split=split, **kwargs)


def load_hub(name: str, split: str, **kwargs):
    """`datasets.load_dataset(name, split=split)`, with a clear error when offline."""
    import datasets

    try:
        return datasets.load_dataset(name, split=split, **kwargs)
    except Exception as e:  # network / offline errors come in many types
        raise RuntimeError(f"could not load {name!r} split {split!r} from the hub ({e}); download it "
                           "and pass local files instead") from e


def _column(ds, field: str):
    if field not in ds.column_names:
        raise KeyError(f"column {field!r} not in the data (columns: {ds.column_names})")
    return ds[field]


def load_text_documents(path, field: str = "text") -> list[str]:
    """Document texts from local files (`field` for jsonl/parquet; whole files for .txt)."""
    return [str(t) for t in _column(load_local(path), field)]


def load_token_documents(source, split: str = "train", field: str = "input_ids",
                         hub: bool = False) -> list[torch.Tensor]:
    """FineWeb-Edu-Long layout: one row per document with its token ids (int64 [n] each)."""
    ds = load_hub(source, split) if hub else load_local(source, split)
    return [torch.tensor(list(x), dtype=torch.long) for x in _column(ds, field)]


def load_qa_records(source, split: str = "train", context: str = "context",
                    question: str = "question", answer: str = "answer",
                    hub: bool = False) -> list[dict]:
    """FineWeb-LQA layout: rows with context, question and answer text."""
    ds = load_hub(source, split) if hub else load_local(source, split)
    cols = [_column(ds, f) for f in (context, question, answer)]
    out = []
    for c, q, a in zip(*cols):
        if isinstance(a, list):
            a = a[0] if a else ""
        out.append({"context": str(c), "question": str(q), "answer": str(a)})
    return out


def load_longbench(path) -> list[dict]:
    """LongBench jsonl rows: input (question), context, answers (list), dataset, _id."""
    ds = load_local(path)
    for f in ("input", "context", "answers"):
        _column(ds, f)
    rows = []
    for i, r in enumerate(ds):
        answers = r["answers"] if isinstance(r["answers"], list) else [r["answers"]]
        rows.append({"id": r.get("_id", str(i)), "input": r["input"], "context": r["context"],
                     "answers": [str(a) for a in answers], "dataset": r.get("dataset", "")})
    return rows
