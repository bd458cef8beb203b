"""LongBench-format QA from local jsonl: token F1 / exact match after the first-line rule."""
from __future__ import annotations

from typing import Sequence

import torch

from ..data.templates import query_text
from .generate import generate_answer
from .harness import ScoreBoard, run_scored
from .metrics import best_over, exact_match, first_line, token_f1

PROMPT = ("Answer the question based on the given passage. Only give me the answer and do not "
          "output any other words.\n\n{context}\n\nQuestion: {input}\nAnswer:")


def longbench_eval(model, tokenizer, rows: Sequence[dict], window: int, modes: Sequence[str],
                   max_new_tokens: int = 32, segment_len: int = 2048, prompt: str = PROMPT,
                   predictions: list | None = None, max_full_tokens: int = 8192) -> dict:
    """Scores per mode: mean token F1 x 100 and exact match x 100 over every row; failures are
    counted and scored as 0 in the `*_counting_failures` columns. Mode "full" refuses (as a
    failure) a prompt longer than `max_full_tokens`."""
    out, failures = [], []
    for mode in modes:
        f1b, emb = ScoreBoard(f"{mode}/f1"), ScoreBoard(f"{mode}/em")

        def score(r):
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
        run_scored(f1b, rows, score)
        emb.failures = list(f1b.failures)
        out.append({"mode": mode, "n": f1b.n, "failed": len(f1b.failures), "f1": 100 * f1b.score,
                    "em": 100 * emb.score, "f1_counting_failures": 100 * f1b.score_with_failures,
                    "em_counting_failures": 100 * emb.score_with_failures})
        failures += [{"mode": mode, **f} for f in f1b.failures]
    return {"rows": out, "failures": failures}
