"""Running benchmark Samples through every mode: the answer generated with the middle of a long
prompt compressed, the benchmark's score per sample, failures counted per task and mode, and
per-task, per-length-bucket and average tables."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from . import infinitebench, leval, longbench
from .generate import generate_answer
from .harness import ScoreBoard, run_scored
from .metrics import first_line
from .samples import Sample

BENCHMARKS = ("longbench", "infinitebench", "leval")


def _base(bench: str, task: str) -> str:
    from .benchmark_files import base_task

    return base_task(bench, task)


def postprocess(bench: str, task: str, text: str) -> str:
    """The paper's rule: LongBench and L-Eval keep the first line of an answer (not for
    summaries, code and step-by-step maths, which span lines); InfiniteBench keeps it whole."""
    t = _base(bench, task)
    if bench == "longbench" and t not in longbench.LONG_OUTPUT_TASKS:
        return first_line(text)
    if bench == "leval" and t in leval.FIRST_LINE_TASKS:
        return first_line(text)
    return text


def score_sample(bench: str, sample: Sample, prediction: str) -> float:
    """The benchmark's per-sample score (0..1) of a prediction."""
    t = _base(bench, sample.task)
    if bench == "longbench":
        return longbench.score(t, prediction, sample.answers, sample.extra.get("all_classes"))
    if bench == "infinitebench":
        return infinitebench.score(t, prediction, sample.answers, sample.extra.get("options"))
    return leval.score(t, prediction, sample.answers)


def _task_score(bench: str, task: str, preds: list[str], answers: list, scores: list[float]) -> float:
    if bench == "leval" and task in leval.ROUGE_TASKS:
        return leval.aggregate(task, preds, answers)
    return 100 * sum(scores) / len(scores) if scores else float("nan")


def _encode(tokenizer, text: str, special: bool) -> torch.Tensor:
    return torch.tensor(tokenizer(text, add_special_tokens=special).input_ids, dtype=torch.long)


def encode_sample(tokenizer, s: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt ids, query ids) as the paper's evaluation builds them: the prompt up to the
    question field (with BOS) and the question (without BOS) tokenised separately and joined;
    the query is the question's ids, so the LLM's tail and the mixer read the same tokens."""
    query = _encode(tokenizer, s.query, False)
    if not s.query or not s.prompt.endswith(s.query):
        return _encode(tokenizer, s.prompt, True), query
    return torch.cat([_encode(tokenizer, s.prompt[:len(s.prompt) - len(s.query)], True), query]), query


def run_benchmark(model, tokenizer, bench: str, samples: dict[str, list[Sample]], window: int,
                  modes: Sequence[str], segment_len: int = 2048, max_full_tokens: int = 8192,
                  max_new_tokens: int | None = None, predictions: list | None = None) -> dict:
    """Per (task, mode): n, failed, score (0..100 over scored samples) and
    score_counting_failures (failed samples as empty answers); LongBench-E tasks add their
    length buckets; `average` is the mean task score per mode."""
    rows, failures = [], []
    for task, task_samples in samples.items():
        for mode in modes:
            board, done = ScoreBoard(f"{task}/{mode}"), []

            def one(s: Sample):
                new = max_new_tokens or s.max_new_tokens
                ids, query = encode_sample(tokenizer, s)
                raw = generate_answer(model, tokenizer, ids, window, new, mode, query, segment_len, max_full_tokens)
                pred = postprocess(bench, task, raw)
                value = score_sample(bench, s, pred)
                done.append((s, pred, value))
                if predictions is not None:
                    predictions.append({"benchmark": bench, "task": task, "id": s.id, "mode": mode,
                                        "prediction": pred, "generated": raw, "answers": s.answers,
                                        "score": value})
                return value
            run_scored(board, task_samples, one)
            failed = [task_samples[f["index"]] for f in board.failures]
            t = _base(bench, task)
            preds = [p for _, p, _ in done]
            golds = [s.answers for s, _, _ in done]
            all_preds = preds + [""] * len(failed)
            all_golds = golds + [s.answers for s in failed]
            row = {"task": task, "mode": mode, "n": board.n, "failed": len(board.failures),
                   "score": _task_score(bench, t, preds, golds, board.scores),
                   "score_counting_failures": (_task_score(bench, t, all_preds, all_golds, [])
                                               if bench == "leval" and t in leval.ROUGE_TASKS
                                               else 100 * board.score_with_failures)}
            if bench == "longbench" and task.endswith("_e"):
                for b in longbench.BUCKETS:
                    vals = [v for s, _, v in done if longbench.length_bucket(s.extra["length"]) == b]
                    row[b] = 100 * sum(vals) / len(vals) if vals else float("nan")
            rows.append(row)
            failures += [{"task": task, "mode": mode, "id": task_samples[f["index"]].id, **f}
                         for f in board.failures]
    return {"rows": rows, "average": average_rows(rows, modes), "failures": failures}


def average_rows(rows: list[dict], modes: Sequence[str]) -> list[dict]:
    """Per mode: the mean task score over tasks with a score, and how many tasks that is."""
    out = []
    for mode in modes:
        mine = [r for r in rows if r["mode"] == mode]
        ok = [r["score"] for r in mine if not math.isnan(r["score"])]
        out.append({"mode": mode, "tasks": len(mine), "tasks_scored": len(ok),
                    "score": sum(ok) / len(ok) if ok else float("nan"),
                    "score_counting_failures": (sum(r["score_counting_failures"] for r in mine) / len(mine)
                                                if mine else float("nan")),
                    "n": sum(r["n"] for r in mine), "failed": sum(r["failed"] for r in mine)})
    return out
