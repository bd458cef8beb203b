"""Checks of the tensors a user passes to the model (token ids, masks, labels, QD queries)."""
from __future__ import annotations

import torch

from ..errors import DataError


def check_ids(ids, what: str, device: torch.device, vocab_size: int,
              allow_1d: bool = True) -> torch.Tensor:
    """Token ids as int64 [B, L]: a tensor of integers on `device`, B >= 1, L >= 1, every id in
    [0, vocab_size). A 1-D tensor is one row when `allow_1d`; DataError otherwise."""
    if not isinstance(ids, torch.Tensor):
        raise DataError(f"{what} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
        raise DataError(f"{what} must hold integer token ids (int64), got {ids.dtype}; "
                        f"convert with .long()")
    if ids.device != device:
        raise DataError(f"{what} is on {ids.device} but the model is on {device}")
    if ids.dim() == 1 and allow_1d:
        ids = ids[None]
    if ids.dim() != 2:
        hint = "; for one sequence pass ids[None]" if ids.dim() == 1 else ""
        raise DataError(f"{what} must be [batch, length], got shape {tuple(ids.shape)}{hint}")
    if ids.shape[0] == 0:
        raise DataError(f"{what} has an empty batch (shape {tuple(ids.shape)}); pass at least "
                        f"one row")
    if ids.shape[1] == 0:
        raise DataError(f"{what} is empty (length 0)")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise DataError(f"{what} holds token id {lo if lo < 0 else hi} outside the vocabulary "
                        f"[0, {vocab_size})")
    return ids.long()


def check_like(t, ids: torch.Tensor, what: str) -> torch.Tensor:
    """A tensor (mask or labels) with the shape of `ids`, moved to its device."""
    if not isinstance(t, torch.Tensor):
        raise DataError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.shape != ids.shape:
        raise DataError(f"{what} shape {tuple(t.shape)} does not match input_ids "
                        f"{tuple(ids.shape)}")
    return t.to(ids.device)


IGNORE_INDEX = -100   # a label the loss skips (Hugging Face convention)


def check_labels(labels, ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Labels as int64 [B, L] on `ids`' device: an integer tensor of `ids`' shape whose every
    value is a token id in [0, vocab_size) or IGNORE_INDEX (-100); DataError otherwise."""
    if not isinstance(labels, torch.Tensor):
        raise DataError(f"labels must be a torch.Tensor of token ids shaped like input_ids "
                        f"{tuple(ids.shape)}, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise DataError(f"labels must hold integer token ids (int64), got {labels.dtype}; "
                        f"convert with .long()")
    labels = check_like(labels, ids, "labels")
    bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab_size))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise DataError(f"labels hold {value}, outside the vocabulary [0, {vocab_size}); use "
                        f"token ids, or {IGNORE_INDEX} for positions without a loss")
    return labels.long()


def check_query_mask(query_mask, q: torch.Tensor) -> torch.Tensor:
    """The QD query mask as bool [B, Tq] for query ids `q` [B, Tq] (all ones when None): every
    row keeps at least one token and is right-padded."""
    if query_mask is None:
        return torch.ones_like(q, dtype=torch.bool)
    if not isinstance(query_mask, torch.Tensor):
        raise DataError(f"query_mask must be a torch.Tensor, got {type(query_mask).__name__}")
    if query_mask.shape[-1] != q.shape[1]:
        raise DataError(f"query_mask shape {tuple(query_mask.shape)} does not match query_ids "
                        f"{tuple(q.shape)}")
    query_mask = query_mask.to(q.device).bool().expand_as(q)
    if not bool(query_mask.any(-1).all()):
        raise DataError("query_mask masks out every query token of some item")
    if not bool((query_mask.long().cummin(-1).values == query_mask.long()).all()):
        raise DataError("query_mask must be right-padded (ones, then zeros)")
    return query_mask
