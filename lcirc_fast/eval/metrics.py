"""QA metrics: answer normalisation, token F1, exact match and the first-line rule."""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower-case, drop punctuation and articles (a/an/the), collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def first_line(s: str) -> str:
    """LongBench / L-Eval post-processing: strip leading newlines, keep the first line."""
    return s.lstrip("\n").split("\n")[0]


def token_f1(prediction: str, gold: str) -> float:
    """F1 over normalised whitespace tokens (0 when either side is empty after normalising)."""
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def best_over(metric, prediction: str, golds: Iterable[str]) -> float:
    """Max of `metric(prediction, gold)` over the gold answers."""
    golds = list(golds)
    if not golds:
        raise ValueError("no gold answers to score against")
    return max(metric(prediction, g) for g in golds)


def digit_hits(prediction: str, gold: str) -> list[bool]:
    """Per digit of the gold key: whether the prediction's digit at that place (its digits read
    in order, others skipped) matches; missing digits are misses."""
    want = [c for c in gold if c.isdigit()]
    if not want:
        raise ValueError(f"gold answer {gold!r} has no digits")
    got = [c for c in prediction if c.isdigit()][:len(want)]
    return [i < len(got) and got[i] == w for i, w in enumerate(want)]


def digit_accuracy(prediction: str, gold: str) -> float:
    """Share of the gold key's digits matched position by position by the first digits of the
    prediction (missing digits count as wrong); chance for a uniform guess is 0.1."""
    hits = digit_hits(prediction, gold)
    return sum(hits) / len(hits)


def contains_answer(prediction: str, gold: str) -> float:
    """1 when the normalised gold appears in the normalised prediction (pass-key retrieval)."""
    g = normalize_answer(gold)
    return float(bool(g) and g in normalize_answer(prediction))
