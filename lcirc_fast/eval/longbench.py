"""LongBench: the official per-task metrics, prompts, answer limits and LongBench-E length
buckets; and `longbench_eval`, the generic-prompt QA run kept for files of no named task."""
from __future__ import annotations

import re
from typing import Sequence

import torch

from ..data.templates import query_text
from .generate import generate_answer
from .harness import ScoreBoard, run_scored
from .longbench_prompts import MAX_NEW_TOKENS, PROMPTS
from .metrics import best_over, exact_match, first_line, token_f1
from .samples import Sample, from_template
from .scoring import fuzz_ratio, max_over, qa_f1, qa_f1_zh, rouge_l, rouge_l_zh, share_of_numbers_equal

PROMPT = ("Answer the question based on the given passage. Only give me the answer and do not "
          "output any other words.\n\n{context}\n\nQuestion: {input}\nAnswer:")

FIRST_LINE_TASKS = ("trec", "triviaqa", "samsum", "lsht")
LONG_OUTPUT_TASKS = ("gov_report", "qmsum", "multi_news", "vcsum", "samsum", "lcc", "repobench-p")
BUCKETS = ("0-4k", "4-8k", "8k+")


def classification(prediction: str, gold: str, all_classes: Sequence[str]) -> float:
    """1/k when the gold class is among the k class names found in the prediction, 0 otherwise.
    Names contained in (and different from) the gold are struck out as LongBench's loop does:
    it removes while iterating, so the name right after a struck one is kept unchecked."""
    found = [c for c in all_classes if c in prediction]
    i = 0
    while i < len(found):
        if found[i] in gold and found[i] != gold:
            del found[i]
        i += 1
    return 1.0 / len(found) if gold in found else 0.0


def _paragraph_number(gold: str, pattern: str) -> str:
    m = re.findall(pattern, gold)
    if not m:
        raise ValueError(f"gold answer {gold!r} names no paragraph ({pattern})")
    return m[0]


def retrieval(prediction: str, gold: str) -> float:
    """Share of the numbers in the prediction equal to the gold's "Paragraph N"."""
    return share_of_numbers_equal(prediction, _paragraph_number(gold, r"Paragraph (\d+)"))


def retrieval_zh(prediction: str, gold: str) -> float:
    """Share of the numbers in the prediction equal to the gold's "段落N"."""
    return share_of_numbers_equal(prediction, _paragraph_number(gold, r"段落(\d+)"))


def count(prediction: str, gold: str) -> float:
    """Share of the numbers in the prediction equal to the gold count."""
    return share_of_numbers_equal(prediction, str(gold))


def code_similarity(prediction: str, gold: str) -> float:
    """fuzz.ratio / 100 between the gold line and the prediction's first line (after leading
    newlines) holding no backtick, '#' or '//' (the empty string when no line qualifies)."""
    lines = prediction.lstrip("\n").split("\n")
    line = next((x for x in lines if "`" not in x and "#" not in x and "//" not in x), "")
    return fuzz_ratio(line, gold) / 100


METRICS = {
    "narrativeqa": qa_f1, "qasper": qa_f1, "multifieldqa_en": qa_f1, "multifieldqa_zh": qa_f1_zh,
    "hotpotqa": qa_f1, "2wikimqa": qa_f1, "musique": qa_f1, "dureader": rouge_l_zh,
    "gov_report": rouge_l, "qmsum": rouge_l, "multi_news": rouge_l, "vcsum": rouge_l_zh,
    "trec": classification, "triviaqa": qa_f1, "samsum": rouge_l, "lsht": classification,
    "passage_retrieval_en": retrieval, "passage_count": count, "passage_retrieval_zh": retrieval_zh,
    "lcc": code_similarity, "repobench-p": code_similarity,
}
TASKS = tuple(METRICS)


def score(task: str, prediction: str, answers: Sequence[str], all_classes: Sequence[str] | None = None) -> float:
    """LongBench's score of one prediction, in [0, 1] (the task score is 100 x the mean): the
    task's metric, maximised over the gold answers, after the first-line rule for trec,
    triviaqa, samsum and lsht."""
    if task not in METRICS:
        raise KeyError(f"unknown LongBench task {task!r}; known: {', '.join(TASKS)}")
    answers = [answers] if isinstance(answers, str) else list(answers)
    if not answers:
        raise ValueError("no gold answers to score against")
    if task in FIRST_LINE_TASKS:
        prediction = first_line(prediction)
    metric = METRICS[task]
    if metric is classification:
        if not all_classes:
            raise ValueError(f"{task} is scored against all_classes, and none were given")
        return max_over(lambda p, g: classification(p, g, all_classes), prediction, answers)
    return max_over(metric, prediction, answers)


def length_bucket(length: int) -> str:
    """LongBench-E's bucket of a sample by its `length` field: 0-4k, 4-8k or 8k+."""
    return BUCKETS[0] if length < 4000 else BUCKETS[1] if length < 8000 else BUCKETS[2]


def make_sample(task: str, row: dict) -> Sample:
    """A checked LongBench row as a Sample with the task's official prompt and answer limit."""
    extra = {"all_classes": row.get("all_classes")}
    if row.get("length") is not None:
        extra["length"] = row["length"]
    return from_template(task, str(row.get("_id") if row.get("_id") is not None else row["_index"]),
                         PROMPTS[task], {"context": row["context"], "input": row["input"]},
                         list(row["answers"]), MAX_NEW_TOKENS[task], extra)


def longbench_eval(model, tokenizer, rows: Sequence[dict], window: int, modes: Sequence[str],
                   max_new_tokens: int = 32, segment_len: int = 2048, prompt: str = PROMPT,
                   predictions: list | None = None, max_full_tokens: int = 8192) -> dict:
    """Scores per mode: mean token F1 x 100 and exact match x 100 over every row; failures are
    counted and scored as 0 in the `*_counting_failures` columns. Mode "full" refuses (as a
    failure) a prompt longer than `max_full_tokens`."""
    out, failures = [], []
    for mode in modes:
        f1b, emb = ScoreBoard(f"{mode}/f1"), ScoreBoard(f"{mode}/em")

        def score_row(r):
            text = prompt.format(context=r["context"], input=r["input"])
            ids = torch.tensor(tokenizer(text).input_ids, dtype=torch.long)
            q = torch.tensor(tokenizer(query_text(text), add_special_tokens=False).input_ids, dtype=torch.long)
            pred = first_line(generate_answer(model, tokenizer, ids, window, max_new_tokens, mode, q, segment_len,
                                             max_full_tokens))
            em = best_over(exact_match, pred, r["answers"])
            emb.scores.append(em)
            if predictions is not None:
                predictions.append({"id": r.get("id"), "mode": mode, "prediction": pred, "answers": r["answers"]})
            return best_over(token_f1, pred, r["answers"])
        run_scored(f1b, rows, score_row)
        emb.failures = list(f1b.failures)
        out.append({"mode": mode, "n": f1b.n, "failed": len(f1b.failures), "f1": 100 * f1b.score,
                    "em": 100 * emb.score, "f1_counting_failures": 100 * f1b.score_with_failures,
                    "em_counting_failures": 100 * emb.score_with_failures})
        failures += [{"mode": mode, **f} for f in f1b.failures]
    return {"rows": out, "failures": failures}
