"""L-Eval: the official scoring of the closed-ended tasks (exam exact match with the answer
parsing of its auto_eval.py) and of the open-ended ones (token F1, or ROUGE-1/2/L of
rouge-score), with its prompts; one released line holds a document and several questions."""
from __future__ import annotations

import re
import string
from typing import Sequence

from . import leval_prompts as P
from .samples import Sample, from_template
from .scoring import qa_f1

MC_TASKS = ("coursera", "quality", "tpo")
CLOSED_TASKS = MC_TASKS + ("sci_fi", "gsm100", "codeU", "topic_retrieval_longchat")
F1_TASKS = ("financial_qa", "legal_contract_qa", "multidoc_qa", "narrative_qa", "natural_question",
            "scientific_qa")
ROUGE_TASKS = ("gov_report_summ", "meeting_summ", "news_summ", "paper_assistant", "patent_summ",
               "review_summ", "tv_show_summ")
TASKS = CLOSED_TASKS + F1_TASKS + ROUGE_TASKS
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
MAX_NEW_TOKENS = {"coursera": 10, "quality": 80, "tpo": 10, "sci_fi": 20, "financial_qa": 300,
                  "narrative_qa": 50, "natural_question": 110, "scientific_qa": 300}
DEFAULT_MAX_NEW_TOKENS = 512
FIRST_LINE_TASKS = MC_TASKS + ("sci_fi", "topic_retrieval_longchat") + F1_TASKS
SCORED_EVALUATIONS = ("exam", "f1", "rouge")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _check(task: str) -> None:
    if task not in TASKS:
        raise KeyError(f"unknown L-Eval task {task!r}; known: {', '.join(TASKS)}")


def _normalize_cased(s: str) -> str:
    """L-Eval's exact-match normalisation: punctuation and articles dropped, case kept."""
    s = "".join(ch for ch in s if ch not in string.punctuation)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exam_match(prediction: str, gold: str) -> float:
    """1 for a match; 0.25 when the gold is option letters and the prediction's letters are a
    strict subset; numbers compared as floats; other golds must appear in the prediction
    (case and spaces ignored)."""
    g = _normalize_cased(gold)
    if all(ch in "ABCD" for ch in g):
        p = _normalize_cased(prediction)
        return 1.0 if p == g else 0.25 if set(p) <= set(g) else 0.0
    try:
        return float(float(prediction) == float(gold))
    except ValueError:
        return float(gold.lower().replace(" ", "") in prediction.lower().replace(" ", ""))


def option_letters(response: str, several: bool) -> str:
    """The option letter(s) a response gives: the first A-D letter, or for `several`
    (coursera) the sorted set of letters read the way L-Eval reads them; "A" when none."""
    if not response.strip():
        return "None"
    if response in "ABCD":
        return response
    if not several:
        hit = next((ch for ch in response if ch in "ABCD"), None)
        if hit is not None:
            return hit
    lead = len(response) - len(response.lstrip("ABCD"))
    letters, response = response[:lead], response[lead:]
    if len(letters) > 1:
        return "".join(sorted(set(letters)))
    response = response.split("Question")[0]
    letters += " ".join(re.findall(r"\s*[A-Z](?=[\s.)])", response)).strip()
    letters = "".join(sorted(set(re.sub(r"[^A-D]", "", letters))))
    if not letters:
        run = re.search(r"[ABCD]+", response)
        letters = run.group(0) if run else ""
    return letters or "A"


def gold_letters(gold: str) -> str:
    """The A-D letters of the gold's first word ("A" when it has none)."""
    return re.sub(r"[^A-D]", "", gold.split()[0]) or "A"


def math_answer(response: str) -> str:
    """The digits of the number after "The answer is", else of the last word holding a digit
    in the first paragraph; digits after a '.' are dropped."""
    m = re.search(r"The answer is (\S+)", response)
    if m:
        word = m.group(1)
    else:
        words = response.split("\n\n")[0].split(" ")[::-1]
        word = next((w for w in words if any(c.isdigit() for c in w)), "")
    return "".join(c for c in word.split(".")[0] if c.isdigit())


def code_gold(text: str) -> str:
    """The gold output with whitespace squeezed and , ' \\ .0 and bracket spacing removed."""
    text = re.sub(r"\s+", " ", text)
    for a, b in ((",", ""), ("'", ""), ("\\", ""), (".0", ""), ("] [", "]["), ("[ [", "[["), ("] ]", "]]")):
        text = text.replace(a, b)
    return text


def code_output(response: str, gold: str) -> str:
    """The part of a response L-Eval compares with the gold output: the words after "the final
    output", else the last ones (gold's word count + 3), filler phrases removed."""
    n = len(gold.split())
    response = code_gold(response)
    for filler in ("will be", "of the code", "is", "would be", "the value of", "the result of", "printed"):
        response = response.replace(filler, "")
    if "the final output" in response:
        words = re.split(r"\s+", response.split("the final output")[-1])[:n + 3]
    else:
        words = re.split(r"\s+", response)[-(n + 3):]
    return " ".join(words)


def judge_gold(gold: str) -> list[str]:
    """[loyalty, fact] of a sci_fi gold such as "True [fact: False]", lower-cased."""
    parts = gold.lower().split("[fact:")
    if len(parts) < 2:
        raise ValueError(f"sci_fi gold {gold!r} has no '[fact: ...]' part")
    return [parts[0].strip(), parts[1][:-1].strip()]


def judge_output(response: str) -> list[str]:
    """[loyalty, fact] answers of a sci_fi response, each "true", "false" or "<error>"."""
    parts = response.lower().split("[fact:")
    out = []
    for part in (parts[0], parts[1][:-1] if len(parts) > 1 else ""):
        word = next((w for w in part.split() if "true" in w or "false" in w), None)
        out.append("<error>" if word is None else "true" if "true" in word else "false")
    return out


def rouge_parts(prediction: str, golds: Sequence[str]) -> dict:
    """ROUGE-1/2/L F-measures (rouge-score, no stemming), each maximised over the golds."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=False)
    scores = [scorer.score(g, prediction) for g in golds]
    return {k: max(s[k].fmeasure for s in scores) for k in ROUGE_KEYS}


def score(task: str, prediction: str, answers) -> float:
    """L-Eval's score of one prediction, in [0, 1] (the task score is 100 x the mean). For the
    ROUGE tasks it is the sample's ROUGE-L F (maximised over the golds), the figure L-Eval's
    leaderboard reports; `aggregate` keeps the corpus-level geometric mean of ROUGE-1/2/L."""
    _check(task)
    golds = [answers] if isinstance(answers, str) else list(answers)
    if not golds:
        raise ValueError("no gold answers to score against")
    if task in ROUGE_TASKS:
        return rouge_parts(prediction, golds)["rougeL"]
    if task in F1_TASKS:
        return max(qa_f1(prediction, g) for g in golds)
    if task in MC_TASKS:
        pred = option_letters(prediction, several=task == "coursera")
        return max(exam_match(pred, gold_letters(g)) for g in golds)
    if task == "gsm100":
        return max(exam_match(math_answer(prediction), math_answer(g)) for g in golds)
    if task == "codeU":
        return max(exam_match(code_output(prediction, g), code_gold(g)) for g in golds)
    if task == "sci_fi":
        got = judge_output(prediction)
        return max(sum(exam_match(p, w) for p, w in zip(got, judge_gold(g))) / 2 for g in golds)
    return max(exam_match(prediction, g) for g in golds)


def aggregate(task: str, predictions: Sequence[str], answers: Sequence) -> float:
    """L-Eval's task score over scored samples: 100 x the geometric mean of the mean
    ROUGE-1/2/L for the ROUGE tasks, 100 x the mean `score` otherwise."""
    if not predictions:
        return float("nan")
    if task in ROUGE_TASKS:
        parts = [rouge_parts(p, [a] if isinstance(a, str) else a) for p, a in zip(predictions, answers)]
        means = [sum(x[k] for x in parts) / len(parts) for k in ROUGE_KEYS]
        return 100 * (means[0] * means[1] * means[2]) ** (1 / 3)
    return 100 * sum(score(task, p, a) for p, a in zip(predictions, answers)) / len(predictions)


def _template(task: str) -> tuple[str, str]:
    if task == "gsm100":
        return P.SYS_GSM, P.DOCUMENT_THEN_INSTRUCTION
    if task == "codeU":
        return P.SYS_CODEU, P.DOCUMENT_THEN_INSTRUCTION
    if task == "topic_retrieval_longchat":
        return P.SYS_TOPIC, P.DOCUMENT_THEN_INSTRUCTION
    if task in CLOSED_TASKS:
        return {"coursera": P.SYS_COURSERA, "sci_fi": P.SYS_SCI_FI}.get(task, P.SYS_EXAM), P.EXAM
    return P.SYS_OPEN, P.OPEN


def make_samples(task: str, row: dict) -> list[Sample]:
    """One Sample per instruction of a checked L-Eval line (a document and its questions). The
    system text and the task text are joined by a blank line, as the Llama-2 chat format
    separates them, without a chat model's [INST] markers."""
    _check(task)
    system, body = _template(task)
    base = str(row.get("id") if row.get("id") is not None else row["_index"])
    out = []
    for j, (inst, gold) in enumerate(zip(row["instructions"], row["outputs"])):
        fields = {"context": row["input"], "question": inst, "n_words": len(gold.split())}
        out.append(from_template(task, f"{base}:{j}", system + "\n\n" + body, fields, [gold],
                                 MAX_NEW_TOKENS.get(task, DEFAULT_MAX_NEW_TOKENS)))
    return out
