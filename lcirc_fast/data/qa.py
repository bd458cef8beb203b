"""Stage-2 long-form QA samples: tokenised prompt + answer with answer-only labels and the
QD query, plus synthetic tasks built from a tokenised corpus (pass key, planted fact, which
book a verse is from)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from .templates import TEMPLATES, Template, query_text
from .tokenized import encode
from .truncation import HeadTail, head_tail_sizes, truncate_with_labels

IGNORE = -100


@dataclass
class QASample:
    """One teacher-forced QA example.

    input_ids: int64 [T] prefix ++ context ++ suffix ++ answer (BOS first if the tokenizer uses one).
    labels: int64 [T], -100 everywhere except the answer tokens and the end token after them
        (`answer_end_ids`: the tokenizer's EOS), so that training teaches greedy decoding to stop.
    query_ids: int64 [Tq] the suffix from "Question:" on, without BOS (QD mixer input).
    prompt_len: tokens before the answer; answer: the gold answer text; task: generator name;
    context_start: index of the context's first token in input_ids; references: the parts of the
    answer a scorer looks for one by one (RULER tasks), () otherwise.
    """
    input_ids: torch.Tensor
    labels: torch.Tensor
    query_ids: torch.Tensor
    prompt_len: int
    answer: str
    task: str = "qa"
    context_start: int = 0
    references: tuple = ()

    @property
    def prompt_ids(self) -> torch.Tensor:
        return self.input_ids[:self.prompt_len]


def bos_ids(tokenizer) -> list[int]:
    """[bos] when the tokenizer adds a BOS by itself, else []."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a").input_ids
    return [bos] if bos is not None and ids and ids[0] == bos else []


def answer_end_ids(tokenizer) -> list[int]:
    """The token(s) that close every QA answer: [eos] (generation stops there); [] for a
    tokenizer without an EOS token."""
    eos = tokenizer.eos_token_id
    return [] if eos is None else [int(eos)]


def build_qa_sample(tokenizer, context_ids: torch.Tensor, question: str, answer: str,
                    template: Template, options: list[str] | None = None,
                    task: str = "qa") -> QASample:
    """Assemble prompt + answer (+ its end token) for `template` around `context_ids` (int64 [n])."""
    if not answer.strip():
        raise ValueError("empty answer")
    suffix = template.fill_suffix(question, options, n_words=len(answer.split()))
    prefix_ids = bos_ids(tokenizer) + tokenizer(template.prefix, add_special_tokens=False).input_ids
    suffix_ids = encode(tokenizer, suffix)
    answer_ids = torch.cat([encode(tokenizer, " " + answer.strip()),
                            torch.tensor(answer_end_ids(tokenizer), dtype=torch.long)])
    prompt = torch.cat([torch.tensor(prefix_ids, dtype=torch.long), context_ids.long(), suffix_ids])
    ids = torch.cat([prompt, answer_ids])
    labels = torch.full_like(ids, IGNORE)
    labels[prompt.numel():] = answer_ids
    query = encode(tokenizer, query_text(suffix))
    return QASample(ids, labels, query, prompt.numel(), answer.strip(), task, len(prefix_ids))


def prepare_training(sample: QASample, window: int) -> tuple[HeadTail, torch.Tensor]:
    """Head + tail of the full sequence for the LLM and the labels cut the same way."""
    return truncate_with_labels(sample.input_ids, sample.labels, window)


# ---------------------------------------------------------------- synthetic tasks on a corpus
_OBJECTS = ("lamp", "gate", "vineyard", "well", "granary", "tower", "scroll", "harp", "altar",
            "orchard", "ark", "fountain", "storehouse", "cedar chest", "silver cup")
_NAMES = ("Azariel", "Beronike", "Caleph", "Dorimon", "Elisheva", "Fendrel", "Gilaad", "Hadriel",
          "Isolde", "Jorvath", "Keturah", "Lemuel", "Mirabel", "Naveen", "Oriah", "Perizel",
          "Quillon", "Rhesa", "Sabeth", "Thalmai", "Uziel", "Veronel", "Wendrick", "Zemira")


class SyntheticQA:
    """Long-context QA built from tokenised documents of one split.

    Tasks: "passkey" (a 5-digit key planted at a random depth), "fact" (a planted invented fact),
    "book" (which named passage a quoted verse comes from; open or 4-way multiple choice) and
    RULER's needle tasks (`ruler.TASKS`: niah_single, niah_multikey, niah_multivalue,
    niah_multiquery, vt; their own wording, the template argument unused).

    needle_window: when set, the planted needles (passkey, fact) lie wholly inside the middle that
    a head + tail cut to this many tokens (`prepare_training`) compresses; `depth` then places the
    needle within that allowed range (0 its first, 1 its last position).
    """

    RULER_TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt")
    TASKS = ("passkey", "fact", "book") + RULER_TASKS
    NEEDLE_TASKS = ("passkey", "fact") + RULER_TASKS

    def __init__(self, tokenizer, docs: Sequence[tuple[str, torch.Tensor]],
                 tasks: Sequence[str] = TASKS, templates: Sequence[Template] = TEMPLATES,
                 needle_window: int | None = None):
        bad = [t for t in tasks if t not in self.TASKS]
        if bad or not tasks:
            raise ValueError(f"unknown QA tasks {bad or tasks}; choose from {self.TASKS}")
        if needle_window is not None:
            if not isinstance(needle_window, int) or needle_window < 2:
                raise ValueError(f"needle_window must be an int >= 2, got {needle_window!r}")
            other = [t for t in tasks if t not in self.NEEDLE_TASKS]
            if other:
                raise ValueError(f"needle_window places planted needles; task(s) {other} plant none "
                                 f"(use only {self.NEEDLE_TASKS})")
        self.needle_window = needle_window
        docs = [(n, d) for n, d in docs if d.numel() > 0]
        if not docs:
            raise ValueError("SyntheticQA needs at least one non-empty document")
        self.tok = tokenizer
        self.docs = docs
        self.tasks = tuple(tasks)
        self.templates = tuple(templates)
        self.open_templates = [t for t in self.templates if not t.multiple_choice]
        if not self.open_templates:
            raise ValueError("need at least one open-answer template")
        self.newline = encode(tokenizer, "\n")

    # -- haystack
    def _haystack(self, rng: random.Random, n: int) -> torch.Tensor:
        """n tokens of contiguous corpus text (documents concatenated when one is too short)."""
        if n < 1:
            raise ValueError(f"a haystack needs at least 1 token, got {n}")
        parts, have = [], 0
        while have < n:
            _, d = self.docs[rng.randrange(len(self.docs))]
            start = rng.randrange(max(1, d.numel() - (n - have)))
            piece = d[start:start + (n - have)]
            parts.append(piece)
            have += piece.numel()
        return torch.cat(parts)[:n]

    def _plant(self, hay: torch.Tensor, needle: torch.Tensor, pos: int) -> torch.Tensor:
        return torch.cat([hay[:pos], self.newline, needle, self.newline, hay[pos:]])

    def _planted(self, rng: random.Random, n: int, needle: torch.Tensor, depth: float | None,
                 template: Template | None, question: str, answer: str, task: str) -> QASample:
        """`needle` planted in n haystack tokens at `depth` (random when None)."""
        if depth is not None and not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must lie in [0, 1], got {depth}")
        hay = self._haystack(rng, n)
        if self.needle_window is None:
            pos = round((rng.random() if depth is None else depth) * hay.numel())
            t = template or rng.choice(self.open_templates)
            return build_qa_sample(self.tok, self._plant(hay, needle, pos), question, answer, t, task=task)
        t = template or rng.choice(self.open_templates)
        s = build_qa_sample(self.tok, self._plant(hay, needle, 0), question, answer, t, task=task)
        lo, hi = self._middle_range(s, needle, hay.numel(), task)
        pos = rng.randint(lo, hi) if depth is None else lo + round(depth * (hi - lo))
        ctx = self._plant(hay, needle, pos)     # same length: only the context tokens move
        s.input_ids[s.context_start:s.context_start + ctx.numel()] = ctx
        return s

    def _middle_range(self, probe: QASample, needle: torch.Tensor, hay_len: int, task: str) -> tuple[int, int]:
        """Haystack positions at which the whole needle falls in the compressed middle, from a
        sample `probe` with the needle planted at position 0."""
        n, w = probe.input_ids.numel(), self.needle_window
        if n <= w:
            raise ValueError(f"a {task} prompt of {n} tokens fits the {w}-token window, so nothing is "
                             f"compressed to hold the needle; use a longer context")
        head, tail = head_tail_sizes(w)
        first = probe.context_start + self.newline.numel()   # needle start when pos = 0
        lo = max(0, head - first)
        hi = min(hay_len, n - tail - first - needle.numel())
        if lo > hi:
            raise ValueError(f"the {needle.numel()}-token {task} needle does not fit in the "
                             f"{n - w}-token compressed middle of a {n}-token prompt under a "
                             f"{w}-token window; use a longer context")
        return lo, hi

    def passkey(self, rng: random.Random, n: int, depth: float | None = None,
                template: Template | None = None) -> QASample:
        key = str(rng.randrange(10000, 100000))
        needle = encode(self.tok, f"The pass key is {key}. Remember it. {key} is the pass key.")
        return self._planted(rng, n, needle, depth, template, "What is the pass key?", key, "passkey")

    def fact(self, rng: random.Random, n: int, depth: float | None = None,
             template: Template | None = None) -> QASample:
        obj, name = rng.choice(_OBJECTS), rng.choice(_NAMES)
        needle = encode(self.tok, f"The keeper of the {obj} was named {name}.")
        return self._planted(rng, n, needle, depth, template,
                             f"What was the name of the keeper of the {obj}?", name, "fact")

    def book(self, rng: random.Random, n: int, depth: float | None = None,
             template: Template | None = None) -> QASample:
        """Passages headed "From the book of X:"; the question quotes a line of one of them."""
        if len(self.docs) < 4:
            raise ValueError("the 'book' task needs at least 4 named documents")
        names = rng.sample(range(len(self.docs)), 4)
        per = max(8, n // 4)
        passages, target_line = [], None
        target = int(min(3, (depth if depth is not None else rng.random()) * 4))
        for j, di in enumerate(names):
            name, d = self.docs[di]
            start = rng.randrange(max(1, d.numel() - per))
            piece = d[start:start + per]
            head = encode(self.tok, f"From the book of {name}:\n")
            passages += [head, piece, self.newline]
            if j == target:
                lines = [ln.strip() for ln in self.tok.decode(piece).split("\n")[1:-1]]
                lines = [ln for ln in lines if len(ln.split()) >= 5] or [self.tok.decode(piece[:24]).strip()]
                target_line = rng.choice(lines)
        ctx = torch.cat(passages)
        gold = self.docs[names[target]][0]
        question = f'Which book is this line from: "{target_line}"?'
        t = template or rng.choice(self.templates)
        if t.multiple_choice:
            opts = [self.docs[i][0] for i in names]
            rng.shuffle(opts)
            letter = "ABCD"[opts.index(gold)]
            return build_qa_sample(self.tok, ctx, question, f"{letter}.", t, options=opts, task="book")
        return build_qa_sample(self.tok, ctx, question, gold, t, task="book")

    def sample(self, rng: random.Random, n: int, task: str | None = None,
               depth: float | None = None, template: Template | None = None) -> QASample:
        """A sample of about n context tokens from a random (or the given) task."""
        task = task or rng.choice(self.tasks)
        if task not in self.TASKS:
            raise ValueError(f"unknown task {task!r}")
        if task in self.RULER_TASKS:
            return self.ruler(rng, n, task)
        return getattr(self, task)(rng, n, depth, template)

    def ruler(self, rng: random.Random, n: int, task: str, with_answer: bool = True,
              needle_window: int | None = None) -> QASample:
        """A RULER needle task on n haystack tokens (`ruler.build_ruler_sample`); needles in the
        compressed middle of `needle_window` (default: this generator's)."""
        from .ruler import build_ruler_sample

        return build_ruler_sample(self.tok, self._haystack, rng, task, n,
                                  needle_window if needle_window is not None else self.needle_window, with_answer)
