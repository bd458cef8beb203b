"""Head + tail truncation: the LLM reads the first and last tokens of a long prompt and the
middle is compressed. Prompts that fit the window are returned unchanged (no duplication)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class HeadTail:
    """Result of `head_tail`.

    llm_ids: int64 [T <= window], what the LLM reads (head ++ tail, or the whole prompt).
    middle: int64 [n - window] to compress, or None when the prompt fits the window.
    head_len: tokens taken from the start (== T when nothing was cut).
    """
    llm_ids: torch.Tensor
    middle: torch.Tensor | None
    head_len: int

    @property
    def truncated(self) -> bool:
        return self.middle is not None


def _check_1d(ids: torch.Tensor, what: str) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError(f"{what} must be a 1-D tensor of token ids, got "
                         f"{type(ids).__name__}{'' if not isinstance(ids, torch.Tensor) else tuple(ids.shape)}")


def head_tail(ids: torch.Tensor, window: int) -> HeadTail:
    """Split a prompt (int64 [n]) for a window of `window` tokens.

    n <= window: the prompt unchanged and no middle. Otherwise the head is window // 2 tokens,
    the tail window - window // 2 tokens, and the middle everything between.
    """
    _check_1d(ids, "ids")
    if not isinstance(window, int) or window < 2:
        raise ValueError(f"window must be an int >= 2, got {window!r}")
    n = ids.numel()
    if n == 0:
        raise ValueError("cannot truncate an empty prompt")
    if n <= window:
        return HeadTail(ids, None, n)
    head, tail = head_tail_sizes(window)
    return HeadTail(torch.cat([ids[:head], ids[n - tail:]]), ids[head:n - tail], head)


def head_tail_sizes(window: int) -> tuple[int, int]:
    """(head, tail) token counts the LLM keeps of a prompt longer than `window`."""
    head = window // 2
    return head, window - head


def truncate_with_labels(ids: torch.Tensor, labels: torch.Tensor, window: int
                         ) -> tuple[HeadTail, torch.Tensor]:
    """`head_tail` on a teacher-forced sequence, applying the same cut to its labels.

    Raises when a label (an answer token) would fall into the compressed middle.
    """
    _check_1d(labels, "labels")
    if labels.shape != ids.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and ids {tuple(ids.shape)} differ in shape")
    ht = head_tail(ids, window)
    if not ht.truncated:
        return ht, labels
    n, tail = ids.numel(), window - ht.head_len
    if bool((labels[ht.head_len:n - tail] != -100).any()):
        raise ValueError(f"answer tokens fall outside the kept tail ({tail} tokens); the answer is "
                         "too long for this window")
    return ht, torch.cat([labels[:ht.head_len], labels[n - tail:]])
