"""Pass-key retrieval accuracy by context length and depth."""
from __future__ import annotations

import random
from typing import Sequence

import torch

from ..data.qa import SyntheticQA
from ..data.templates import get_template
from .generate import generate_answer
from .harness import ScoreBoard, run_scored
from .metrics import contains_answer, digit_accuracy


def passkey_eval(model, tokenizer, docs: Sequence[tuple[str, torch.Tensor]], window: int,
                 lengths: Sequence[int], depths: Sequence[float], modes: Sequence[str],
                 samples: int = 5, seed: int = 0, segment_len: int = 2048, max_new_tokens: int = 12,
                 progress=None, max_full_tokens: int = 8192) -> dict:
    """Accuracy (gold key contained in the answer) for every (mode, length, depth) cell, and
    digit accuracy (the key's digits matched in place; chance 0.1), failures counting as 0.

    Every mode sees the same samples; mode "full" refuses (as a failure) a prompt longer than
    `max_full_tokens`. Returns {"rows": [...], "failures": [...]}; each row keeps
    its answers under "predictions".
    """
    qa = SyntheticQA(tokenizer, docs, tasks=("passkey",))
    tmpl = get_template("passage_only")
    rows, failures = [], []
    for length in lengths:
        for depth in depths:
            rng = random.Random(f"{seed}-{length}-{depth}")
            cell = [qa.passkey(rng, length, depth, tmpl) for _ in range(samples)]
            for mode in modes:
                board = ScoreBoard(f"{mode}/{length}/{depth}")
                preds: dict[int, str] = {}

                def score(s):
                    pred = generate_answer(model, tokenizer, s.prompt_ids, window, max_new_tokens, mode,
                                           s.query_ids, segment_len, max_full_tokens)
                    preds[id(s)] = pred
                    if progress is not None:
                        progress()
                    return contains_answer(pred, s.answer)
                run_scored(board, cell, score)
                r = board.row()
                digits = [digit_accuracy(preds[id(s)], s.answer) if id(s) in preds else 0.0 for s in cell]
                r.update(mode=mode, length=length, depth=depth, accuracy=r["score_counting_failures_as_zero"],
                         digit_accuracy=sum(digits) / len(cell),
                         predictions=[{"answer": s.answer, "prediction": preds.get(id(s))} for s in cell])
                rows.append(r)
                failures += [{"cell": board.name, **f} for f in board.failures]
    return {"rows": rows, "failures": failures}
