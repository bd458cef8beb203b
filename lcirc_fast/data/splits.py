"""Train / validation / test splits of a corpus of named documents, split by document name.

Every document (a KJV book) lands in exactly one split, so no text leaks between splits.
"""
from __future__ import annotations

import random
from typing import Sequence

SPLITS = ("train", "validation", "test")


def split_by_name(docs: Sequence[tuple[str, str]], val_fraction: float = 0.1,
                  test_fraction: float = 0.1, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Assign whole documents to splits with a seeded shuffle of their names.

    Args:
        docs: (name, text) pairs with unique names.
        val_fraction / test_fraction: share of documents (at least one each when > 0).
        seed: shuffle seed; the same seed always gives the same split.
    Returns:
        {"train": [...], "validation": [...], "test": [...]}, each in the input order.
    """
    names = [n for n, _ in docs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"document names must be unique to split by name; duplicates: {dup[:5]}")
    for what, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{what} must be in [0, 1), got {frac}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must leave some training documents")
    n = len(docs)
    n_val = max(1, round(n * val_fraction)) if val_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n_val + n_test >= n:
        raise ValueError(f"{n} documents are too few for {n_val} validation + {n_test} test")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    test = set(order[:n_test])
    val = set(order[n_test:n_test + n_val])
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for name, text in docs:
        split = "test" if name in test else "validation" if name in val else "train"
        out[split].append((name, text))
    return out


def kjv_splits(val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0):
    """The 66 KJV books split by book (about 52 / 7 / 7)."""
    from ..assets import kjv_books

    return split_by_name(kjv_books(), val_fraction, test_fraction, seed)
