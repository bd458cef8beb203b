"""Pass-key retrieval by context length and depth: strict accuracy (the benchmark's rule) with
the lenient counts beside it, every answer kept as a prediction record."""
from __future__ import annotations

import random
from typing import Sequence

import torch

from ..data.qa import SyntheticQA
from ..data.templates import get_template
from . import infinitebench
from .generate import generate_answer
from .harness import ScoreBoard, group_cells, run_scored
from .metrics import contains_answer, digit_accuracy, digit_hits

SWAPPED_MODES = {"lcirc_swapped": "lcirc"}    # control mode -> the mode it runs with a partner's memory


def strict_passkey(prediction: str, key: str) -> float:
    """The benchmark's rule (InfiniteBench Retrieve.PassKey): 1 when the first integer of the
    answer is the key, so " 1907999" does not count for 19079."""
    return infinitebench.score("passkey", prediction, [key])


def cell_row(records: list[dict]) -> dict:
    """Scores of one (mode, length, depth) cell from its prediction records (`passkey_eval`'s
    predictions.jsonl lines), failed samples (answer None) counting 0: accuracy (strict, the
    headline), lenient_contains (the key anywhere in the answer), digit_accuracy (lenient: the
    key's digits matched in place, chance 0.1) and per key position; a swapped control's cells
    add the same scores against the key of the memory read (partner_*)."""
    n = len(records)
    answers = [r["answer"] or "" for r in records]
    hits = [digit_hits(a, r["key"]) for a, r in zip(answers, records)]
    r0 = records[0]
    row = {"mode": r0["mode"], "length": r0["length"], "depth": r0["depth"], "n": n,
           "failed": sum(r["answer"] is None for r in records),
           "accuracy": sum(strict_passkey(a, r["key"]) for a, r in zip(answers, records)) / n,
           "lenient_contains": sum(contains_answer(a, r["key"]) for a, r in zip(answers, records)) / n,
           "digit_accuracy": sum(sum(h) / len(h) for h in hits) / n,
           "digit_accuracy_by_pos": [sum(h[i] for h in hits) / n for i in range(min(map(len, hits)))]}
    if "memory_key" in r0:
        row["partner_accuracy"] = sum(strict_passkey(a, r["memory_key"]) for a, r in zip(answers, records)) / n
        row["partner_lenient_contains"] = sum(contains_answer(a, r["memory_key"])
                                              for a, r in zip(answers, records)) / n
        row["partner_digit_accuracy"] = sum(digit_accuracy(a, r["memory_key"]) for a, r in zip(answers, records)) / n
    return row


def rows_from_predictions(records: list[dict]) -> list[dict]:
    """`cell_row` of every (mode, length, depth) cell of the records, in their order."""
    return [cell_row(c) for c in group_cells(records, ("mode", "length", "depth"))]


def passkey_eval(model, tokenizer, docs: Sequence[tuple[str, torch.Tensor]], window: int,
                 lengths: Sequence[int], depths: Sequence[float], modes: Sequence[str],
                 samples: int = 5, seed: int = 0, segment_len: int = 2048, max_new_tokens: int = 12,
                 progress=None, max_full_tokens: int = 8192) -> dict:
    """Pass-key retrieval for every (mode, length, depth) cell, scored by `cell_row` (strict
    accuracy first, the lenient counts beside it).

    Every mode sees the same samples; mode "full" refuses (as a failure) a prompt longer than
    `max_full_tokens`. Mode "lcirc_swapped" is a control: sample j of a cell is answered by the
    LCIRC model with sample j+1's middle compressed (another key; cyclic within the cell, which
    needs at least 2 samples); its answers are scored against sample j's own key, and its rows
    add the partner_* scores against sample j+1's key (the key in the memory read). Returns
    {"rows", "failures", "predictions"}: one prediction record per answer (key, mode, length,
    depth, index, answer (None when it failed), memory_key for the control), from which
    `rows_from_predictions` gives the rows again.
    """
    if any(m in SWAPPED_MODES for m in modes) and samples < 2:
        raise ValueError("mode lcirc_swapped takes another sample's memory: it needs samples >= 2")
    qa = SyntheticQA(tokenizer, docs, tasks=("passkey",))
    tmpl = get_template("passage_only")
    rows, failures, records = [], [], []
    for length in lengths:
        for depth in depths:
            rng = random.Random(f"{seed}-{length}-{depth}")
            cell = [qa.passkey(rng, length, depth, tmpl) for _ in range(samples)]
            partner = {id(s): cell[(j + 1) % len(cell)] for j, s in enumerate(cell)}
            for mode in modes:
                board = ScoreBoard(f"{mode}/{length}/{depth}")
                preds: dict[int, str] = {}
                swapped = mode in SWAPPED_MODES

                def score(s, mode=mode, swapped=swapped, preds=preds):
                    pred = generate_answer(model, tokenizer, s.prompt_ids, window, max_new_tokens,
                                           SWAPPED_MODES.get(mode, mode), s.query_ids, segment_len,
                                           max_full_tokens,
                                           memory_from=partner[id(s)].prompt_ids if swapped else None)
                    preds[id(s)] = pred
                    if progress is not None:
                        progress()
                    return strict_passkey(pred, s.answer)
                run_scored(board, cell, score)
                cell_records = []
                for i, s in enumerate(cell):
                    rec = {"benchmark": "passkey", "mode": mode, "length": length, "depth": depth, "index": i,
                           "key": s.answer, "answer": preds.get(id(s))}
                    if swapped:
                        rec["memory_key"] = partner[id(s)].answer
                    cell_records.append(rec)
                records += cell_records
                rows.append(cell_row(cell_records))
                failures += [{"cell": board.name, **f} for f in board.failures]
    return {"rows": rows, "failures": failures, "predictions": records}


def by_length(rows: list[dict]) -> list[dict]:
    """`passkey_eval` rows pooled over depths, per (mode, length): samples, failures, accuracy
    (strict), lenient_contains, digit accuracy, digit accuracy per key position and (swapped
    control) partner scores, each a mean over the pooled samples."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["mode"], r["length"]), []).append(r)
    out = []
    for (mode, length), cells in groups.items():
        n = sum(c["n"] for c in cells)

        def mean(value, cells=cells, n=n):          # over the pooled samples
            return sum(value(c) * c["n"] for c in cells) / n if n else 0.0

        row = {"mode": mode, "length": length, "n": n, "failed": sum(c["failed"] for c in cells),
               "accuracy": mean(lambda c: c["accuracy"]),
               "lenient_contains": mean(lambda c: c.get("lenient_contains", float("nan"))),
               "digit_accuracy": mean(lambda c: c["digit_accuracy"])}
        width = min(len(c["digit_accuracy_by_pos"]) for c in cells)
        row["digit_accuracy_by_pos"] = [round(mean(lambda c, i=i: c["digit_accuracy_by_pos"][i]), 4)
                                        for i in range(width)]
        for key in ("partner_accuracy", "partner_lenient_contains", "partner_digit_accuracy"):
            if all(key in c for c in cells):
                row[key] = mean(lambda c, key=key: c[key])
        out.append(row)
    return out
