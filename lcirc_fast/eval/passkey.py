"""Pass-key retrieval accuracy by context length and depth."""
from __future__ import annotations

import random
from typing import Sequence

import torch

from ..data.qa import SyntheticQA
from ..data.templates import get_template
from .generate import generate_answer
from .harness import ScoreBoard, run_scored
from .metrics import contains_answer, digit_accuracy, digit_hits

SWAPPED_MODES = {"lcirc_swapped": "lcirc"}    # control mode -> the mode it runs with a partner's memory


def passkey_eval(model, tokenizer, docs: Sequence[tuple[str, torch.Tensor]], window: int,
                 lengths: Sequence[int], depths: Sequence[float], modes: Sequence[str],
                 samples: int = 5, seed: int = 0, segment_len: int = 2048, max_new_tokens: int = 12,
                 progress=None, max_full_tokens: int = 8192) -> dict:
    """Accuracy (gold key contained in the answer) for every (mode, length, depth) cell, and
    digit accuracy (the key's digits matched in place; chance 0.1), failures counting as 0.

    Every mode sees the same samples; mode "full" refuses (as a failure) a prompt longer than
    `max_full_tokens`. Mode "lcirc_swapped" is a control: sample j of a cell is answered by the
    LCIRC model with sample j+1's middle compressed (another key; cyclic within the cell, which
    needs at least 2 samples); its answers are scored against sample j's own key, and its rows
    add "partner_accuracy" and "partner_digit_accuracy", the same scores against sample j+1's
    key (the key in the memory read). Returns
    {"rows": [...], "failures": [...]}; each row keeps its answers under "predictions".
    """
    if any(m in SWAPPED_MODES for m in modes) and samples < 2:
        raise ValueError("mode lcirc_swapped takes another sample's memory: it needs samples >= 2")
    qa = SyntheticQA(tokenizer, docs, tasks=("passkey",))
    tmpl = get_template("passage_only")
    rows, failures = [], []
    for length in lengths:
        for depth in depths:
            rng = random.Random(f"{seed}-{length}-{depth}")
            cell = [qa.passkey(rng, length, depth, tmpl) for _ in range(samples)]
            partner = {id(s): cell[(j + 1) % len(cell)] for j, s in enumerate(cell)}
            for mode in modes:
                board = ScoreBoard(f"{mode}/{length}/{depth}")
                preds: dict[int, str] = {}

                def score(s):
                    swapped = mode in SWAPPED_MODES
                    pred = generate_answer(model, tokenizer, s.prompt_ids, window, max_new_tokens,
                                           SWAPPED_MODES.get(mode, mode), s.query_ids, segment_len,
                                           max_full_tokens,
                                           memory_from=partner[id(s)].prompt_ids if swapped else None)
                    preds[id(s)] = pred
                    if progress is not None:
                        progress()
                    return contains_answer(pred, s.answer)
                run_scored(board, cell, score)
                r = board.row()
                hits = [digit_hits(preds.get(id(s), ""), s.answer) for s in cell]   # failed: no digits
                digits = [sum(h) / len(h) for h in hits]
                r.update(mode=mode, length=length, depth=depth, accuracy=r["score_counting_failures_as_zero"],
                         digit_accuracy=sum(digits) / len(cell),
                         digit_accuracy_by_pos=[sum(h[i] for h in hits) / len(cell)
                                                for i in range(min(map(len, hits)))],
                         predictions=[{"answer": s.answer, "prediction": preds.get(id(s))} for s in cell])
                if mode in SWAPPED_MODES:       # answers that hold the key of the memory read
                    r["partner_accuracy"] = sum(
                        id(s) in preds and contains_answer(preds[id(s)], partner[id(s)].answer)
                        for s in cell) / len(cell)
                    r["partner_digit_accuracy"] = sum(
                        digit_accuracy(preds[id(s)], partner[id(s)].answer) if id(s) in preds else 0.0
                        for s in cell) / len(cell)
                    for p, s in zip(r["predictions"], cell):
                        p["memory_answer"] = partner[id(s)].answer
                rows.append(r)
                failures += [{"cell": board.name, **f} for f in board.failures]
    return {"rows": rows, "failures": failures}


def by_length(rows: list[dict]) -> list[dict]:
    """`passkey_eval` rows pooled over depths, per (mode, length): samples, failures, accuracy,
    digit accuracy, digit accuracy per key position and (swapped control) partner scores, each
    a mean over the pooled samples."""
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
               "digit_accuracy": mean(lambda c: c["digit_accuracy"])}
        width = min(len(c["digit_accuracy_by_pos"]) for c in cells)
        row["digit_accuracy_by_pos"] = [round(mean(lambda c, i=i: c["digit_accuracy_by_pos"][i]), 4)
                                        for i in range(width)]
        for key in ("partner_accuracy", "partner_digit_accuracy"):
            if all(key in c for c in cells):
                row[key] = mean(lambda c, key=key: c[key])
        out.append(row)
    return out
