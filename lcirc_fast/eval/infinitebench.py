"""InfiniteBench: each task's official metric, prompt (open-source model templates) and answer
limit. Task names are the released file stems (longbook_qa_eng, ...); the paper's names
(En.QA, ...) are accepted too."""
from __future__ import annotations

import re
from typing import Sequence

from .infinitebench_prompts import MAX_NEW_TOKENS, PROMPTS
from .samples import Sample, from_template
from .scoring import f1_of_tokens, max_over, normalize_zh, qa_f1

ALIASES = {"En.Sum": "longbook_sum_eng", "En.QA": "longbook_qa_eng", "En.MC": "longbook_choice_eng",
           "En.Dia": "longdialogue_qa_eng", "Zh.QA": "longbook_qa_chn", "Code.Debug": "code_debug",
           "Math.Find": "math_find", "Retrieve.PassKey": "passkey", "Retrieve.Number": "number_string",
           "Retrieve.KV": "kv_retrieval", "Code.Run": "code_run", "Math.Calc": "math_calc"}
TASKS = tuple(PROMPTS)
CHOICE_TASKS = ("longbook_choice_eng", "code_debug")
KV_TASKS = ("kv_retrieval", "kv_retrieval_prefix", "kv_retrieval_both")
NUMBER_TASKS = ("math_find", "code_run", "math_calc")      # answers are numbers, not text
FUNC_CALL = re.compile(r"func_[0-9]+\(-?[0-9]+\)")      # what code_run's input asks to evaluate


def task_name(name: str) -> str:
    """The file stem of a task given by stem or by the paper's name."""
    name = ALIASES.get(name, name)
    if name not in PROMPTS:
        raise KeyError(f"unknown InfiniteBench task {name!r}; known: {', '.join(TASKS)} "
                       f"(or {', '.join(ALIASES)})")
    return name


def _replace(text: str, chars: str) -> str:
    for c in chars:
        text = text.replace(c, " ")
    return text


def _squeeze(text: str) -> str:
    while "  " in text:
        text = text.replace("  ", " ")
    return text


def _first(label):
    return label[0] if isinstance(label, list) else label


def first_integer(prediction: str) -> str:
    """The first run of digits in the prediction ("" when there is none)."""
    return next((x for x in re.split("[^0-9]", prediction) if x), "")


def choice_label(answer, options: Sequence[str]) -> list[str]:
    """[option text, letter] of a multiple-choice answer given as its text, [text] or
    [text, letter]; ValueError when the text is not among the options."""
    if isinstance(answer, list) and len(answer) == 2 and answer[1] in ("A", "B", "C", "D"):
        return list(answer)
    text = answer[0] if isinstance(answer, list) and len(answer) == 1 else answer
    if not isinstance(text, str) or text not in list(options):
        raise ValueError(f"answer {answer!r} is not one of the options {list(options)}")
    return [text, "ABCD"[list(options).index(text)]]


def _after_prefix(pred: str, prefixes: Sequence[str]) -> tuple[bool, str | None]:
    """(found, rest) for the first of `prefixes` that occurs in `pred`: rest is the text after it
    and one separating character, None when the prediction ends there."""
    for prefix in prefixes:
        i = pred.find(prefix)
        if i == -1:
            continue
        start = i + len(prefix) + 1
        return True, (None if len(pred) < start else pred[start:])
    return False, None


def _choice(pred: str, label: list[str]) -> float:
    pred = pred.strip()
    if pred == "":
        return 0.0
    if pred[0] in "ABCD":
        return float(pred[0] in label)
    if pred in label:
        return 1.0
    pred = _squeeze(_replace(pred, "\n\"'.,?!{}"))
    found, rest = _after_prefix(pred, ("answer is:", "answer:", "answer is", "option is"))
    if found:
        return 0.0 if rest is None else float(any(rest.startswith(s) for s in label))
    word = next((w for w in pred.split() if w in "ABCD"), None)
    return float(word is not None and word in label)


def _code_debug(pred: str, label: list[str]) -> float:
    fn_name, letter = label[0], label[1]
    pred = pred.strip()
    if pred[:2] in (f"{letter}.", f"{letter}:"):
        return 1.0
    for s in ("\n", "`", "'", '"', "-", "*", "Option", "option"):
        pred = pred.replace(s, " ")
    pred = _squeeze(pred)
    found, rest = _after_prefix(pred, ("answer is:", "is:", "answer:", "correct option is:"))
    if found and rest is not None:
        return float(rest.startswith(letter) or rest.startswith(fn_name))
    return 0.0


def _math_find(pred: str, label) -> float:
    label = _first(label)
    if isinstance(label, bool) or not isinstance(label, (int, float)):
        raise ValueError(f"math_find answer must be a number, got {label!r}")
    m = re.search(r"\d+\.\d+|\d+", pred)   # the first number; "8.5" never equals an integer label
    if m is None:
        return 0.0
    return float(float(m.group(0)) == label)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def answer_problem(task: str, answer) -> str | None:
    """Why `answer` (a released `answer` field) cannot be scored for `task`, or None. Text tasks
    take a string or a list of strings: the official scorer compares an int label with the text it
    reads from the answer and so scores such a row 0 whatever the answer, hence a refusal rather
    than a silent 0 or a conversion the official score would not make."""
    task = task_name(task)
    if answer is None or answer == [] or answer == "":
        return "'answer' is missing or empty"
    if task == "math_find":
        v = _first(answer)
        return None if _is_int(v) or isinstance(v, float) else f"'answer' {answer!r} is not a number"
    if task == "code_run":
        return None if _is_int(_first(answer)) else f"'answer' {answer!r} is not an integer"
    if task == "math_calc":
        values = answer[0] if isinstance(answer, list) and answer and isinstance(answer[0], list) else answer
        ok = isinstance(values, list) and values and all(_is_int(v) for v in values)
        return None if ok else f"'answer' {answer!r} is not a list of integers"
    golds = answer if isinstance(answer, list) else [answer]
    if not all(isinstance(g, str) for g in golds):
        return (f"'answer' {answer!r} holds a {type(next(g for g in golds if not isinstance(g, str))).__name__}, "
                f"not text: {task} answers are a string or a list of strings (e.g. [\"71432\"])")
    return None


def _code_run(pred: str, label) -> float:
    """1 when the last word of the answer (after dropping newlines and . ` ' " :) is the integer."""
    words = _replace(pred.strip(), "\n.`'\":").split()
    if not words:
        return 0.0
    try:
        return float(int(words[-1]) == _first(label))
    except ValueError:
        return 0.0


def _math_calc(pred: str, label) -> float:
    """Share of the expected values matched in order by the answer's digit runs, stopping at the
    first mismatch (a '-' is not read, so a negative value never matches)."""
    values = label[0] if isinstance(label[0], list) else label
    got = [int(x) for x in re.split("[^0-9]", pred) if x]
    hits = 0
    for want, have in zip(values, got):
        if want != have:
            break
        hits += 1
    return hits / len(values)


def _rouge_lsum(pred: str, golds) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=False)
    golds = [golds] if isinstance(golds, str) else list(golds)
    return max(scorer.score(g, pred)["rougeLsum"].fmeasure for g in golds)


def _qa_f1_zh(pred: str, gold: str) -> float:
    return f1_of_tokens(list(normalize_zh(pred)), list(normalize_zh(gold)))


def score(task: str, prediction: str, answer, options: Sequence[str] | None = None) -> float:
    """InfiniteBench's score of one prediction, in [0, 1] (the task score is 100 x the mean).
    `answer` is the released `answer` field; `options` the released options (En.MC, Code.Debug)."""
    task = task_name(task)
    problem = answer_problem(task, answer)
    if problem:
        raise ValueError(problem)
    golds = answer if isinstance(answer, list) else [answer]
    if task == "longbook_qa_eng":
        return max_over(qa_f1, prediction, golds)
    if task == "longbook_qa_chn":
        return max_over(_qa_f1_zh, prediction, golds)
    if task == "longbook_sum_eng":
        return _rouge_lsum(prediction, golds)
    if task in CHOICE_TASKS:
        if options is None or len(options) != 4:
            raise ValueError(f"{task} needs the 4 released options, got {options!r}")
        label = choice_label(answer, options)
        return _choice(prediction, label) if task == "longbook_choice_eng" else _code_debug(prediction, label)
    if task in ("passkey", "number_string"):
        return float(_first(answer) == first_integer(prediction))
    if task in KV_TASKS:
        return float(_first(answer) in _replace(prediction, "\n:\"'.,?!{}").split())
    if task == "longdialogue_qa_eng":
        words = [w.upper() for w in _replace(prediction.strip(), "\n:\"'.,?!{}").split()]
        return float(_first(answer) in words)
    if task == "code_run":
        return _code_run(prediction, answer)
    if task == "math_calc":
        return _math_calc(prediction, answer)
    return _math_find(prediction, answer)


def _math_find_prefix(question: str) -> str:
    found = re.findall(r"The .+ of", question)
    if not found:
        raise ValueError(f"math_find input {question!r} names no 'The ... of' target")
    return f"What is {found[0].lower()[:-3]} in the following list?"


def make_sample(task: str, row: dict) -> Sample:
    """A checked InfiniteBench row as a Sample with the task's template and answer limit."""
    fields = {"context": row["context"], "input": row["input"], "question": row["input"]}
    options = row.get("options") or []
    if task in CHOICE_TASKS:
        if len(options) != 4:
            raise ValueError(f"{task} needs 4 options, the row has {len(options)}")
        fields.update({f"OPTION_{'ABCD'[i]}": o for i, o in enumerate(options)})
    if task == "math_find":
        fields["prefix"] = _math_find_prefix(row["input"])
    if task == "code_run":
        call = FUNC_CALL.search(row["input"])
        if call is None:
            raise ValueError(f"code_run input {row['input']!r} names no func_<n>(<int>) call")
        fields.update(func_call=call.group(0), func=call.group(0).split("(")[0])
    ident = str(row["id"]) if row.get("id") is not None else str(row["_index"])
    return from_template(task, ident, PROMPTS[task], fields, row["answer"], MAX_NEW_TOKENS[task],
                         {"options": options or None})
