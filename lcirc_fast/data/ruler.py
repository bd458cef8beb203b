"""RULER's needle-in-a-haystack family on a tokenised corpus: single needle, multi-key,
multi-value, multi-query and variable tracking, with RULER's task wording (its `niah` and
`variable_tracking` templates with their answer prefixes, for a base model) and needles made
as RULER makes them (keys: adjective-noun words; values: 7-digit numbers; variable chains of
5-letter names and a 5-digit value). The haystack is the corpus text instead of essays/noise."""
from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

import torch

from .qa import IGNORE, QASample, SyntheticQA, answer_end_ids, bos_ids
from .tokenized import encode
from .truncation import head_tail_sizes

TASKS = SyntheticQA.RULER_TASKS
TOKENS_TO_GENERATE = {"niah_single": 128, "niah_multikey": 128, "niah_multivalue": 128,
                      "niah_multiquery": 128, "vt": 30}
DEPTHS = [round(100 * i / 39) for i in range(40)]   # RULER's 40 insertion depths (percent)

NIAH_NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
NIAH_BEFORE = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
               "I will quiz you about the {type_v} afterwards.\n")
NIAH_AFTER = ("\nWhat are all the special magic {type_v} for {query} mentioned in the provided text? "
              "The special magic {type_v} for {query} mentioned in the provided text are")
VT_BEFORE = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_AFTER = ("\nQuestion: Find all variables that are assigned the value {query} in the text above. "
            "Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
            "are assigned the value {query}, they are: ")


@dataclass(frozen=True)
class NiahSpec:
    keys: int      # needles' keys planted
    values: int    # values per key
    queries: int   # keys asked for


NIAH = {"niah_single": NiahSpec(1, 1, 1), "niah_multikey": NiahSpec(4, 1, 1),
        "niah_multivalue": NiahSpec(1, 4, 1), "niah_multiquery": NiahSpec(4, 1, 4)}
VT_HOPS = 4

_ADJS = ("amber", "ancient", "bitter", "brave", "bright", "calm", "clever", "crimson", "curious", "dusty",
         "eager", "early", "fancy", "fierce", "gentle", "giant", "golden", "hollow", "humble", "icy",
         "jolly", "lively", "lucky", "mellow", "misty", "noble", "odd", "pale", "proud", "quiet", "rapid",
         "royal", "rusty", "shiny", "silent", "silver", "sleepy", "steady", "swift", "tender", "wild", "witty")
_NOUNS = ("anchor", "badger", "basket", "beacon", "bridge", "candle", "canyon", "castle", "comet", "compass",
          "desert", "dragon", "falcon", "feather", "garden", "glacier", "harbor", "helmet", "island", "jacket",
          "kettle", "ladder", "lantern", "meadow", "mirror", "needle", "orchid", "otter", "pebble", "pepper",
          "pillow", "planet", "rabbit", "ribbon", "saddle", "spider", "temple", "thunder", "tunnel", "violin",
          "walnut", "whistle")


def singular(template: str) -> str:
    """RULER's wording for one expected value: Some -> A, are all -> is, are -> is, answers -> answer."""
    for a, b in (("Some", "A"), ("are all", "is"), ("are", "is"), ("answers", "answer")):
        template = template.replace(a, b)
    return template


def random_word(rng: random.Random) -> str:
    return f"{rng.choice(_ADJS)}-{rng.choice(_NOUNS)}"


def random_number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))


@dataclass
class NeedleTask:
    """The text parts of one task instance: what precedes and follows the context, the needle
    sentences in the order they are planted, and the references a scorer looks for."""
    before: str
    after: str
    needles: list[str]
    references: list[str]


def niah_task(rng: random.Random, task: str) -> NeedleTask:
    spec = NIAH[task]
    keys: list[str] = []
    while len(keys) < spec.keys:                      # distinct keys, so each question has one answer
        k = random_word(rng)
        if k not in keys:
            keys.append(k)
    values = [[random_number(rng) for _ in range(spec.values)] for _ in keys]
    needles = [NIAH_NEEDLE.format(type_v="numbers", key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    asked = rng.sample(range(spec.keys), spec.queries)
    queries = [keys[i] for i in asked]
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    before, after, type_v = NIAH_BEFORE, NIAH_AFTER, "numbers"
    if spec.queries * spec.values == 1:
        before, after, type_v = singular(before), singular(after), "number"
    return NeedleTask(before.format(type_v=type_v), after.format(type_v=type_v, query=query), needles,
                      [v for i in asked for v in values[i]])


def vt_task(rng: random.Random) -> NeedleTask:
    names: list[str] = []
    while len(names) < VT_HOPS + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(VT_HOPS)]
    return NeedleTask(VT_BEFORE, VT_AFTER.format(query=value, num_v=len(names)), chain, list(names))


def make_task(rng: random.Random, task: str) -> NeedleTask:
    if task == "vt":
        return vt_task(rng)
    if task in NIAH:
        return niah_task(rng, task)
    raise ValueError(f"unknown RULER task {task!r}; choose from {', '.join(TASKS)}")


def build_ruler_sample(tokenizer, haystack: Callable[[random.Random, int], torch.Tensor], rng: random.Random,
                       task: str, n: int, needle_window: int | None = None, with_answer: bool = True
                       ) -> QASample:
    """A RULER task with `n` haystack tokens (int64 from `haystack(rng, n)`), its needles planted on
    their own lines in order at depths drawn from RULER's 40-point grid.

    needle_window: when set, every needle lies in the middle that a head + tail cut of the whole
    sequence (the prompt, and the answer when `with_answer`) to this many tokens compresses.
    The target (`with_answer`) is the references joined by ", " and closed by the EOS token;
    `references` keeps them for string_match_all; the QD query is the text after the context.
    """
    t = make_task(rng, task)
    hay = haystack(rng, n)
    nl = encode(tokenizer, "\n")
    needles = [torch.cat([nl, encode(tokenizer, s), nl]) for s in t.needles]
    prefix = torch.tensor(bos_ids(tokenizer) + tokenizer(t.before, add_special_tokens=False).input_ids,
                          dtype=torch.long)
    after = encode(tokenizer, t.after)
    answer_text = ", ".join(t.references)
    answer = (torch.cat([encode(tokenizer, " " + answer_text), torch.tensor(answer_end_ids(tokenizer),
                                                                            dtype=torch.long)])
              if with_answer else torch.zeros(0, dtype=torch.long))
    planted = sum(x.numel() for x in needles)
    lo, hi = 0, hay.numel()
    if needle_window is not None:
        total = prefix.numel() + hay.numel() + planted + after.numel() + answer.numel()
        if total <= needle_window:
            raise ValueError(f"a {task} sequence of {total} tokens fits the {needle_window}-token window, so "
                             "nothing is compressed to hold the needles; use a longer context")
        head, tail = head_tail_sizes(needle_window)
        lo = max(0, head - prefix.numel())
        hi = min(hay.numel(), total - tail - prefix.numel() - planted)
        if lo > hi:
            raise ValueError(f"the {planted} needle tokens of {task} do not fit in the compressed middle of a "
                             f"{total}-token sequence under a {needle_window}-token window; use a longer context")
    depths = sorted(rng.sample(DEPTHS, len(needles)))
    cuts = [lo + (hi - lo) * d // 100 for d in depths]
    parts, last = [], 0
    for cut, needle in zip(cuts, needles):
        parts += [hay[last:cut], needle]
        last = cut
    context = torch.cat(parts + [hay[last:]])
    prompt = torch.cat([prefix, context, after])
    ids = torch.cat([prompt, answer])
    labels = torch.full_like(ids, IGNORE)
    labels[prompt.numel():] = answer
    query = encode(tokenizer, t.after.lstrip("\n"))
    return QASample(ids, labels, query, prompt.numel(), answer_text, task, prefix.numel(),
                    references=tuple(t.references))
