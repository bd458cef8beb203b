"""Finding a benchmark's task files (its released layout: one `<task>.jsonl` per task) and
turning their checked rows into Samples; bad rows are refused naming file, line and field."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

from ..data.loaders import _numbered_rows, longbench_problems, refuse_rows
from ..errors import ConfigError, DataError
from . import infinitebench, leval, longbench
from .samples import Sample

SUFFIXES = (".jsonl", ".json", ".parquet")


def _is_str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _longbench_problems(task: str, row: dict) -> list[str]:
    out = longbench_problems(row)
    classes = row.get("all_classes")
    if classes is not None and not _is_str_list(classes):
        out.append("'all_classes' is not a list of strings")
    if base_task("longbench", task) in ("trec", "lsht") and not classes:
        out.append(f"'all_classes' is missing or empty, and {task} is scored against it")
    pattern = {"passage_retrieval_en": r"Paragraph (\d+)", "passage_retrieval_zh": r"段落(\d+)"}.get(
        base_task("longbench", task))
    if pattern and _is_str_list(row.get("answers")) and not all(re.search(pattern, a) for a in row["answers"]):
        out.append(f"an answer names no paragraph ({pattern})")
    length = row.get("length")
    if task.endswith("_e") and (isinstance(length, bool) or not isinstance(length, int)):
        out.append("'length' is not an integer (LongBench-E buckets samples by it)")
    return out


def _infinitebench_problems(task: str, row: dict) -> list[str]:
    out = [f"'{k}' is not a string" if k in row else f"no '{k}' field"
           for k in ("context", "input") if not isinstance(row.get(k), str)]
    answer = row.get("answer")
    problem = infinitebench.answer_problem(task, answer)
    if problem:
        out.append(problem)
    if task == "code_run" and isinstance(row.get("input"), str) and not infinitebench.FUNC_CALL.search(row["input"]):
        out.append("'input' names no func_<n>(<int>) call")
    if task == "math_find" and isinstance(row.get("input"), str) and not re.search(r"The .+ of", row["input"]):
        out.append("'input' names no 'The ... of' target")
    if task in infinitebench.CHOICE_TASKS:
        options = row.get("options")
        if not _is_str_list(options) or len(options) != 4:
            out.append("'options' is not a list of 4 strings")
        elif problem is None:
            try:
                infinitebench.choice_label(answer, options)
            except ValueError as e:
                out.append(str(e))
    return out


def _leval_problems(task: str, row: dict) -> list[str]:
    out = [] if isinstance(row.get("input"), str) else ["'input' is not a string (the document)"]
    inst, outs = row.get("instructions"), row.get("outputs")
    if not _is_str_list(inst) or not inst:
        out.append("'instructions' is not a non-empty list of strings")
    if not _is_str_list(outs):
        out.append("'outputs' is not a list of strings")
    elif _is_str_list(inst) and len(inst) != len(outs):
        out.append(f"{len(inst)} instructions but {len(outs)} outputs")
    elif task == "sci_fi" and any("[fact:" not in o.lower() for o in outs):
        out.append("a sci_fi output has no '[fact: ...]' part")
    return out


def base_task(bench: str, task: str) -> str:
    """The scored task of a file stem (LongBench-E's `<task>_e` is scored as `<task>`)."""
    if bench == "longbench" and task.endswith("_e") and task[:-2] in longbench.TASKS:
        return task[:-2]
    if bench == "infinitebench":
        return infinitebench.task_name(task)
    return task


def known_tasks(bench: str) -> tuple[str, ...]:
    if bench == "longbench":
        return longbench.TASKS + tuple(t + "_e" for t in longbench.TASKS)
    return {"infinitebench": infinitebench.TASKS, "leval": leval.TASKS}[bench]


def find_task_files(bench: str, data: str, tasks: list[str] | None) -> dict[str, str]:
    """task -> file. `data` is a directory (searched with its subdirectories for `<task>.jsonl`,
    .json or .parquet) or a comma list of files named after their tasks."""
    known = known_tasks(bench)
    if tasks:
        tasks = [infinitebench.ALIASES.get(t, t) if bench == "infinitebench" else t for t in tasks]
        bad = [t for t in tasks if t not in known]
        if bad:
            raise ConfigError(f"--tasks {','.join(bad)}: not {bench} task(s); known: {', '.join(known)}")
    root = Path(data)
    if root.is_dir():
        found = {}
        for f in sorted(root.rglob("*")):
            if f.suffix.lower() in SUFFIXES and f.stem in known and f.stem not in found:
                found[f.stem] = str(f)
    else:
        files = [x for x in data.split(",") if x]
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise DataError(f"--data: files not found: {missing}")
        unnamed = [f for f in files if Path(f).stem not in known]
        if unnamed:
            raise DataError(f"--data {','.join(unnamed)}: {bench} files are named after their tasks "
                            f"(<task>.jsonl); known tasks: {', '.join(known)}")
        found = {Path(f).stem: f for f in files}
    if tasks:
        absent = [t for t in tasks if t not in found]
        if absent:
            raise DataError(f"--data {data}: no file for task(s) {', '.join(absent)} "
                            f"(expected {', '.join(t + '.jsonl' for t in absent)})")
        return {t: found[t] for t in tasks}
    if not found:
        raise DataError(f"--data {data}: no {bench} task file (<task>.jsonl with a task of {bench})")
    return found


_PROBLEMS: dict[str, Callable[[str, dict], list[str]]] = {
    "longbench": _longbench_problems, "infinitebench": _infinitebench_problems, "leval": _leval_problems}


def _samples_of(bench: str, task: str, index: int, row: dict) -> list[Sample]:
    row = {**row, "_index": index}
    scored = base_task(bench, task)
    if bench == "longbench":
        s = longbench.make_sample(scored, row)
        s.task = task
        return [s]
    if bench == "infinitebench":
        return [infinitebench.make_sample(scored, row)]
    return leval.make_samples(task, row)


def load_task(bench: str, task: str, path: str) -> tuple[list[Sample], int]:
    """(samples, rows excluded) of one task file. Every row is checked first; L-Eval rows
    whose `evaluation` is not exam, f1 or rouge (LLM / human judged) are excluded as L-Eval's
    n-gram evaluation excludes them, and counted."""
    rows = _numbered_rows(path)
    problems, samples, excluded = [], [], 0
    for f, where, r in rows:
        bad = _PROBLEMS[bench](task, r)
        if bad:
            ident = next((f" (id {r[k]!r})" for k in ("_id", "id") if r.get(k) is not None), "")
            problems.append((f, where + ident, ", ".join(bad)))
    refuse_rows(problems, len(rows), f"{bench} {task} rows")
    for i, (f, where, r) in enumerate(rows):
        if bench == "leval" and r.get("evaluation") not in (None, *leval.SCORED_EVALUATIONS):
            excluded += 1
            continue
        try:
            samples += _samples_of(bench, task, i, r)
        except (ValueError, KeyError) as e:
            raise DataError(f"{f}, {where}: {e}") from None
    if not samples:
        raise DataError(f"{path}: no row of {task} can be scored ({excluded} excluded as LLM/human judged)")
    return samples, excluded
