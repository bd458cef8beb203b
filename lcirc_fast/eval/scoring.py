"""Metric building blocks shared by the LongBench, InfiniteBench and L-Eval scorers, each on the
definition its benchmark publishes (token F1, ROUGE-L of the `rouge` package, jieba words,
fuzzywuzzy ratios, digit counting)."""
from __future__ import annotations

import logging
import re
import string
import warnings
from collections import Counter
from typing import Callable, Iterable, Sequence

from .metrics import normalize_answer

_ZH_PUNCT = ("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀"
             "｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛"
             "〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")
_ALL_PUNCT = set(string.punctuation + _ZH_PUNCT)


def normalize_zh(s: str) -> str:
    """Lower-case, drop ASCII and Chinese punctuation and every whitespace character."""
    return "".join(ch for ch in s.lower() if ch not in _ALL_PUNCT and not ch.isspace())


def f1_of_tokens(pred: Sequence[str], gold: Sequence[str]) -> float:
    """Multiset-overlap F1; 0 when nothing overlaps (two empty sides included)."""
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    p, r = same / len(pred), same / len(gold)
    return 2 * p * r / (p + r)


def qa_f1(prediction: str, gold: str) -> float:
    """F1 over the whitespace tokens of the normalised answers (SQuAD normalisation)."""
    return f1_of_tokens(normalize_answer(prediction).split(), normalize_answer(gold).split())


def jieba_words(text: str) -> list[str]:
    """jieba's precise-mode words of `text` (its dictionary-loading log silenced)."""
    import jieba

    jieba.setLogLevel(logging.WARNING)
    return list(jieba.cut(text, cut_all=False))


def qa_f1_zh(prediction: str, gold: str) -> float:
    """F1 over jieba words, each normalised with `normalize_zh`, empty words dropped."""
    def words(t):
        return [w for w in (normalize_zh(x) for x in jieba_words(t)) if w]
    return f1_of_tokens(words(prediction), words(gold))


def rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F of the `rouge` package; 0 where that package cannot score the pair (an empty
    side, or a text too long for its recursive LCS)."""
    from rouge import Rouge

    try:
        return float(Rouge().get_scores([prediction], [gold], avg=True)["rouge-l"]["f"])
    except (ValueError, RecursionError):
        return 0.0


def rouge_l_zh(prediction: str, gold: str) -> float:
    """`rouge_l` over jieba words joined by spaces."""
    return rouge_l(" ".join(jieba_words(prediction)), " ".join(jieba_words(gold)))


def fuzz_ratio(a: str, b: str) -> int:
    """fuzzywuzzy's `fuzz.ratio` (0..100, difflib based), the one LongBench's code uses."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fuzzywuzzy import fuzz
    return fuzz.ratio(a, b)


def share_of_numbers_equal(prediction: str, wanted: str) -> float:
    """Of all digit runs in `prediction`, the share equal to `wanted`; 0 when there is none."""
    numbers = re.findall(r"\d+", prediction)
    return sum(n == wanted for n in numbers) / len(numbers) if numbers else 0.0


def max_over(metric: Callable[[str, str], float], prediction: str, golds: Iterable[str]) -> float:
    """Max of `metric` over the gold answers, starting at 0."""
    best = 0.0
    for g in golds:
        best = max(best, float(metric(prediction, g)))
    return best
