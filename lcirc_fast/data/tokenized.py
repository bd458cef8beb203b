"""Tokenise documents once and cache the token ids on disk (.pt, portable to machines without
`datasets`)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable id of a tokenizer's behaviour (class, vocab size, and a probe encoding)."""
    probe = "In the beginning God created the heaven and the earth.\n  Question: 12345?"
    ids = tokenizer(probe, add_special_tokens=False).input_ids
    return f"{type(tokenizer).__name__}-{len(tokenizer)}-{hashlib.sha1(str(ids).encode()).hexdigest()[:12]}"


def encode(tokenizer, text: str) -> torch.Tensor:
    """Token ids of `text` without special tokens: int64 [n]."""
    return torch.tensor(tokenizer(text, add_special_tokens=False).input_ids, dtype=torch.long)


def tokenize_documents(texts: Sequence[str], tokenizer, cache_dir: str | os.PathLike | None = None
                       ) -> list[torch.Tensor]:
    """Token ids (int64 [n_i], no BOS/EOS) of each text, cached by content + tokenizer.

    With `cache_dir` the ids are stored in `<cache_dir>/tok-<hash>.pt`, written to a temp file
    and renamed, and re-used when the same texts are tokenised again.
    """
    if isinstance(texts, str):
        raise TypeError("tokenize_documents takes a sequence of texts, not one string")
    h = hashlib.sha1(tokenizer_fingerprint(tokenizer).encode())
    for t in texts:
        h.update(hashlib.sha1(t.encode("utf-8")).digest())
    path = None
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"tok-{h.hexdigest()[:20]}.pt"
        if path.is_file():
            try:
                return [t.long() for t in torch.load(path, weights_only=True)]
            except Exception:
                pass  # unreadable cache: rebuild
    ids = [encode(tokenizer, t) for t in texts]
    if path is not None:
        fd, tmp = tempfile.mkstemp(prefix=".tok-", suffix=".pt", dir=path.parent)
        os.close(fd)
        try:
            small = [t.to(torch.int32) if len(tokenizer) < 2**31 else t for t in ids]
            torch.save(small, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ids


def chunk_documents(docs: Sequence[torch.Tensor], max_tokens: int | None,
                    min_tokens: int = 1) -> list[torch.Tensor]:
    """Cut each document into consecutive pieces of at most `max_tokens` (None: no cut); pieces
    shorter than `min_tokens` are dropped."""
    out = []
    for d in docs:
        if max_tokens is None:
            pieces = [d]
        else:
            if max_tokens < 1:
                raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
            pieces = list(d.split(max_tokens))
        out.extend(p for p in pieces if p.numel() >= min_tokens)
    return out
