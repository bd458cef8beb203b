"""`lcirc eval ruler`: RULER's needle-in-a-haystack family (`data.ruler`) by task, mode and
context length, scored with RULER's definitions; every answer kept as a prediction record."""
from __future__ import annotations

import random
import re
from typing import Sequence

import torch

from ..data.qa import SyntheticQA
from ..data.ruler import TASKS
from .generate import generate_answer
from .harness import ScoreBoard, group_cells, run_scored

SWAPPED_MODES = {"lcirc_swapped": "lcirc", "qd_swapped": "qd"}   # control -> the mode run with a partner's memory
_CONTROL_CHARS = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    """RULER's post-processing: strip, control characters to newlines, strip again."""
    return _CONTROL_CHARS.sub("\n", prediction.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER's string_match_all for one answer: the share of references found in it (case
    ignored); the task score is 100 x the mean over samples."""
    if not references:
        raise ValueError("no references to score against")
    p = prediction.lower()
    return sum(r.lower() in p for r in references) / len(references)


def string_match_part(prediction: str, references: Sequence[str]) -> float:
    """RULER's string_match_part for one answer: 1 when any reference is found in it (case ignored)."""
    if not references:
        raise ValueError("no references to score against")
    p = prediction.lower()
    return float(any(r.lower() in p for r in references))


def score_record(rec: dict, against: str = "references") -> tuple[float, float]:
    """(string_match_all, string_match_part) of a prediction record; a failed answer (None) scores 0."""
    if rec["answer"] is None:
        return 0.0, 0.0
    pred = postprocess(rec["answer"])
    return string_match_all(pred, rec[against]), string_match_part(pred, rec[against])


def cell_row(records: list[dict]) -> dict:
    """Scores of one (task, mode, length) cell from its prediction records, failures as 0:
    score (string_match_all, RULER's metric for these tasks, in [0, 1]), match_part, and for a
    swapped control partner_score against the references of the memory read."""
    n = len(records)
    scores = [score_record(r) for r in records]
    r0 = records[0]
    row = {"task": r0["task"], "mode": r0["mode"], "length": r0["length"], "n": n,
           "failed": sum(r["answer"] is None for r in records),
           "score": sum(a for a, _ in scores) / n, "match_part": sum(p for _, p in scores) / n}
    if "memory_references" in r0:
        row["partner_score"] = sum(score_record(r, "memory_references")[0] for r in records) / n
    return row


def rows_from_predictions(records: list[dict]) -> list[dict]:
    """`cell_row` of every (task, mode, length) cell of the records, in their order."""
    return [cell_row(c) for c in group_cells(records, ("task", "mode", "length"))]


def ruler_eval(model, tokenizer, docs: Sequence[tuple[str, torch.Tensor]], window: int, lengths: Sequence[int],
               tasks: Sequence[str], modes: Sequence[str], samples: int = 5, seed: int = 0,
               segment_len: int = 2048, max_new_tokens: int | None = None, max_full_tokens: int = 8192) -> dict:
    """Every (task, mode, length) cell on the same samples per (task, length): `length` haystack
    tokens with the needles planted in the part the LLM window does not read (the compressed
    middle of a head + tail cut to window - max_new_tokens), so the truncated base cannot see them.

    max_new_tokens: answer tokens (None: RULER's per task, 128 for niah, 30 for vt). Swapped
    controls (lcirc_swapped, qd_swapped) answer sample j with sample j+1's middle compressed
    (cyclic; samples >= 2) and add partner_score. Returns {"rows", "failures", "predictions"}:
    one record per answer (task, mode, length, index, references, answer or None when it
    failed, memory_references for a control), from which `rows_from_predictions` gives the rows.
    """
    from ..data.ruler import TOKENS_TO_GENERATE

    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"unknown RULER task(s) {bad or tasks}; choose from {', '.join(TASKS)}")
    if any(m in SWAPPED_MODES for m in modes) and samples < 2:
        raise ValueError("a swapped-memory mode takes another sample's memory: it needs samples >= 2")
    qa = SyntheticQA(tokenizer, docs, tasks=tasks)
    rows, failures, records = [], [], []
    for task in tasks:
        new = max_new_tokens or TOKENS_TO_GENERATE[task]
        for length in lengths:
            rng = random.Random(f"{seed}-{task}-{length}")
            cell = [qa.ruler(rng, length, task, with_answer=False, needle_window=window - new)
                    for _ in range(samples)]
            for mode in modes:
                board = ScoreBoard(f"{task}/{mode}/{length}")
                preds: dict[int, str] = {}
                swapped = mode in SWAPPED_MODES

                def answer(j, mode=mode, swapped=swapped, preds=preds, new=new, cell=cell):
                    s = cell[j]
                    preds[j] = generate_answer(model, tokenizer, s.prompt_ids, window, new,
                                               SWAPPED_MODES.get(mode, mode), s.query_ids, segment_len,
                                               max_full_tokens,
                                               memory_from=cell[(j + 1) % len(cell)].prompt_ids if swapped else None)
                    return string_match_all(postprocess(preds[j]), s.references)
                run_scored(board, range(len(cell)), answer)
                cell_records = []
                for j, s in enumerate(cell):
                    rec = {"benchmark": "ruler", "task": task, "mode": mode, "length": length, "index": j,
                           "references": list(s.references), "answer": preds.get(j)}
                    if swapped:
                        rec["memory_references"] = list(cell[(j + 1) % len(cell)].references)
                    cell_records.append(rec)
                records += cell_records
                rows.append(cell_row(cell_records))
                failures += [{"cell": board.name, **f} for f in board.failures]
    return {"rows": rows, "failures": failures, "predictions": records}
