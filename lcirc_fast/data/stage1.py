"""Stage 1 (language modelling): after compressing segment i, predict the next window."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from ..segmenting import balanced_boundaries, fixed_boundaries, random_boundaries


@dataclass
class Stage1Step:
    """One recurrence step of one document.

    segment: int64 [L], the tokens compressed at this step (tokens[b_i:b_{i+1}]).
    window: int64 [T], the tokens the LLM reads and predicts (tokens[b_{i+1}:b_{i+1}+W]).
    step: index i within the document (0 starts a fresh memory).
    doc: index of the document in its corpus.
    """
    segment: torch.Tensor
    window: torch.Tensor
    step: int
    doc: int


def draw_boundaries(n: int, mode: str, generator: torch.Generator | None = None,
                    segment_len: int = 2048, min_len: int = 64, max_len: int = 4032) -> list[int]:
    """Boundaries for a training document: "random" (P(l) ∝ l), "fixed" (segment_len tokens,
    the rest last) or "balanced" (equal segments of about segment_len tokens)."""
    if mode == "random":
        return random_boundaries(n, generator=generator, min_len=min_len, max_len=max_len)
    if mode == "fixed":
        return fixed_boundaries(n, segment_len)
    if mode == "balanced":
        return balanced_boundaries(n, segment_len)
    raise ValueError(f"segmenting must be 'random', 'fixed' or 'balanced', got {mode!r}")


def _checked_boundaries(ids: torch.Tensor, boundaries: Sequence[int], window: int) -> list[int]:
    """Validate a 1-D document, its boundaries [0, ..., N] and the window; return the boundaries."""
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    b = list(boundaries)
    if b[0] != 0 or b[-1] != ids.numel() or any(y <= x for x, y in zip(b, b[1:])):
        raise ValueError(f"boundaries must increase strictly from 0 to {ids.numel()}")
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    return b


def stage1_steps(ids: torch.Tensor, boundaries: Sequence[int], window: int,
                 doc: int = 0) -> list[Stage1Step]:
    """Steps i = 0 .. S-2 of a document cut at `boundaries` [0, b1, ..., N].

    The last segment is never compressed, only predicted; a document with fewer than three
    boundaries yields no step. Windows shorter than 2 tokens (nothing to predict) are skipped.
    """
    b = _checked_boundaries(ids, boundaries, window)
    out = []
    for i in range(len(b) - 2):
        win = ids[b[i + 1]:min(b[i + 1] + window, ids.numel())]
        if win.numel() < 2:
            continue
        out.append(Stage1Step(ids[b[i]:b[i + 1]], win, i, doc))
    return out


def repeat_passage_steps(ids: torch.Tensor, boundaries: Sequence[int], window: int,
                         doc: int = 0) -> list[Stage1Step]:
    """Copy-task steps: every segment P = tokens[b_i:b_{i+1}] is compressed into a fresh memory
    (step 0) and the window to predict is P itself (its first `window` tokens).

    The window's loss can only fall below plain language modelling if the memory carries P.
    Segments shorter than 2 tokens are skipped.
    """
    b = _checked_boundaries(ids, boundaries, window)
    out = []
    for x, y in zip(b, b[1:]):
        if y - x < 2:
            continue
        seg = ids[x:y]
        out.append(Stage1Step(seg, seg[:window].clone(), 0, doc))
    return out


def repeated_passage_docs(docs: Sequence[torch.Tensor], passage_len: int) -> list[torch.Tensor]:
    """Evaluation documents P ++ P (int64 [2 * passage_len]) with P the first `passage_len`
    tokens of each document; documents shorter than `passage_len` are dropped.

    Scoring the last `passage_len` tokens with the first copy compressed measures how much of P
    the memory carries (compare with a memory of another document's P)."""
    if passage_len < 2:
        raise ValueError(f"passage_len must be >= 2 tokens, got {passage_len}")
    return [torch.cat([d[:passage_len], d[:passage_len]]) for d in docs if d.numel() >= passage_len]


def stage1_stream(docs: Sequence[torch.Tensor], window: int, generator: torch.Generator,
                  segmenting: str = "random", segment_len: int = 256, min_len: int = 64,
                  max_len: int = 4032, shard: tuple[int, int] = (0, 1),
                  repeat_passage: bool = False, copy_mix: float = 0.0) -> Iterator[Stage1Step]:
    """Endless stream of steps over shuffled documents (epoch after epoch).

    `shard` = (rank, world): each rank takes every world-th document of each epoch's order.
    All randomness comes from `generator`, so the stream is reproducible from its state.
    `repeat_passage`: copy-task steps (`repeat_passage_steps`) instead of next-window steps.
    `copy_mix`: the share of documents (drawn from `generator`, one draw per document) whose steps
    are copy-task steps, the others next-window steps; 0 draws nothing.
    """
    rank, world = shard
    if not 0.0 <= copy_mix <= 1.0:
        raise ValueError(f"copy_mix must lie in [0, 1], got {copy_mix}")
    if not docs:
        raise ValueError("no documents to train on")
    while True:
        order = torch.randperm(len(docs), generator=generator).tolist()[rank::world]
        yielded = False
        for d in order:
            ids = docs[d]
            if ids.numel() < 2:
                continue
            b = draw_boundaries(ids.numel(), segmenting, generator, segment_len, min_len, max_len)
            copy = repeat_passage or (copy_mix > 0 and float(torch.rand(1, generator=generator)) < copy_mix)
            make = repeat_passage_steps if copy else stage1_steps
            for s in make(ids, b, window, d):
                yielded = True
                yield s
        if not yielded:
            raise ValueError("no document is long enough to give a training step (each needs at "
                             "least three segment boundaries)")
