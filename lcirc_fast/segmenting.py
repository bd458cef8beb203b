"""Cutting a context of n tokens into segments. Every function returns boundaries
[0 = b0 < b1 < ... < bS = n]; segment i is tokens[b_i : b_{i+1}]."""
from __future__ import annotations

from typing import Sequence

import torch


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"cannot segment an empty context (n={n!r} tokens)")


def fixed_boundaries(n: int, segment_len: int) -> list[int]:
    """Segments of `segment_len` tokens; the last one holds the remainder."""
    _check_n(n)
    if not isinstance(segment_len, int) or segment_len < 1:
        raise ValueError(f"segment_len must be a positive int, got {segment_len!r}")
    return list(range(0, n, segment_len)) + [n]


def balanced_lengths(n: int, segment_len: int = 2048) -> list[int]:
    """The paper's evaluation rule ("~2K segments"), as segment lengths.

    q = n // segment_len segments, each segment_len + (n mod segment_len) // q tokens long, the
    first also taking the leftover; every segment is segment_len .. 2*segment_len-1 tokens.
    Under 2*segment_len tokens the whole text is one segment; 0 tokens make no segment.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"tokens to segment must be an int >= 0, got {n!r}")
    if isinstance(segment_len, bool) or not isinstance(segment_len, int) or segment_len < 1:
        raise ValueError(f"segment_len must be a positive int, got {segment_len!r}")
    q = n // segment_len
    if q <= 1:
        return [n] if n else []
    rem = n % segment_len
    each = segment_len + rem // q
    return [each + rem % q] + [each] * (q - 1)


def balanced_boundaries(n: int, segment_len: int = 2048) -> list[int]:
    """Boundaries of `balanced_lengths` (n >= 1)."""
    _check_n(n)
    out = [0]
    for length in balanced_lengths(n, segment_len):
        out.append(out[-1] + length)
    return out


def random_boundaries(n: int, generator: torch.Generator | None = None, min_len: int = 64,
                      max_len: int = 4032) -> list[int]:
    """Training rule: lengths drawn i.i.d. from {min_len..max_len} with P(l) ∝ l until the text
    is used up; the last segment is the remainder (it may be shorter than min_len)."""
    _check_n(n)
    if not 1 <= min_len <= max_len:
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
    lengths = torch.arange(min_len, max_len + 1, dtype=torch.float64)
    out, pos = [0], 0
    while pos < n:
        draw = int(lengths[torch.multinomial(lengths, 1, generator=generator)].item())
        pos = min(n, pos + draw)
        out.append(pos)
    return out


def check_boundaries(boundaries: Sequence[int], n: int, max_segment_len: int) -> list[int]:
    """Validate explicit boundaries [0, ..., n] and return them as a list of ints."""
    _check_n(n)
    b = [int(x) for x in boundaries]
    if len(b) < 2 or b[0] != 0 or b[-1] != n:
        raise ValueError(f"boundaries must start at 0 and end at the context length {n}, "
                         f"got {b[:3]}...{b[-3:]}" if len(b) > 6 else
                         f"boundaries must start at 0 and end at the context length {n}, got {b}")
    for i, (lo, hi) in enumerate(zip(b[:-1], b[1:])):
        if hi <= lo:
            raise ValueError(f"boundaries must be strictly increasing; segment {i} is "
                             f"[{lo}, {hi})")
        if hi - lo > max_segment_len:
            raise ValueError(f"segment {i} has {hi - lo} tokens, longer than the position table "
                             f"({max_segment_len} rows; raise LCIRCConfig.max_segment_len)")
    return b


__all__ = ["fixed_boundaries", "balanced_lengths", "balanced_boundaries", "random_boundaries", "check_boundaries"]
