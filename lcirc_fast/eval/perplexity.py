"""Perplexity by context length: the LLM reads the last `window` tokens, the tokens before are
compressed (LCIRC), dropped (truncated base) or read directly (full attention)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..segmenting import balanced_boundaries

MODES = ("base", "lcirc", "full")


@torch.no_grad()
def window_nll(model, ids: torch.Tensor, window: int, mode: str, score_len: int | None = None,
               segment_len: int = 2048) -> tuple[float, int]:
    """Summed NLL (nats) and token count over the last `score_len` tokens of `ids` (int64 [n]).

    score_len defaults to window - 1 (every predictable position of the window). Modes:
    "base": the LLM reads the last `window` tokens, no memory; "lcirc": the same plus a memory of
    everything before, compressed in ~`segment_len` segments; "full": the LLM reads all n tokens.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    n = ids.numel()
    score_len = window - 1 if score_len is None else score_len
    if not 1 <= score_len < min(window, n):
        raise ValueError(f"score_len={score_len} must be in [1, min(window, n) - 1] "
                         f"(window={window}, n={n})")
    dev = model.device
    ids = ids.to(dev)
    memory = None
    if mode == "full":
        llm = ids
    else:
        llm = ids[-window:]
        prefix = ids[:-window] if n > window else ids[:0]
        if mode == "lcirc" and prefix.numel() > 0:
            memory = model.compress(prefix[None], boundaries=balanced_boundaries(prefix.numel(), segment_len))
    labels = torch.full_like(llm, -100)
    labels[-score_len:] = llm[-score_len:]
    out = model(llm[None], memory=memory)
    logits = out.logits[0, :-1].float()
    tgt = labels[1:]
    keep = tgt != -100
    nll = torch.nn.functional.cross_entropy(logits[keep], tgt[keep], reduction="sum")
    return float(nll), int(keep.sum())


def perplexity_by_length(model, docs: Sequence[torch.Tensor], window: int,
                         multipliers: Sequence[int] = (1, 2, 4, 8), modes: Sequence[str] = ("base", "lcirc"),
                         score_len: int | None = None, segment_len: int = 2048,
                         max_full_tokens: int = 8192, progress=None) -> dict:
    """Per (length, mode): perplexity over the same scored tokens of every document long enough.

    For length L = m * window each document contributes its first L tokens. Mode
    "lcirc_swapped" is a control: document i's last window with document i+1's prefix compressed.
    Returns
    {"rows": [{length, mode, ppl, nll, tokens, docs, failures, skipped_short}], "failures": [...],
     "paired": [...]}; "paired" has, per length where both lcirc and lcirc_swapped ran, the
    per-document gap (swapped - own NLL per token): mean, standard error and how many documents
    scored better with their own memory.
    "full" runs only where L <= max_full_tokens. Exceptions are counted per row, never dropped.
    """
    rows, failures, per_doc = [], [], {}
    for m in multipliers:
        length = int(m * window)
        usable = [d for d in docs if d.numel() >= length]
        for mode in modes:
            if mode == "full" and length > max_full_tokens:
                continue
            nll, tok, ok, bad = 0.0, 0, 0, 0
            for i, d in enumerate(usable):
                try:
                    ids, m_ = d[:length], mode
                    if mode == "lcirc_swapped":
                        if len(usable) < 2 or length <= window:
                            raise ValueError("lcirc_swapped needs two documents longer than the window")
                        other = usable[(i + 1) % len(usable)]
                        ids, m_ = torch.cat([other[:length - window], d[length - window:length]]), "lcirc"
                    a, b = window_nll(model, ids, window, m_, score_len, segment_len)
                    nll, tok, ok = nll + a, tok + b, ok + 1
                    per_doc.setdefault((length, mode), {})[i] = a / b
                except Exception as e:  # counted and reported, never dropped silently
                    bad += 1
                    failures.append({"length": length, "mode": mode, "doc": i, "error": repr(e)})
                if progress is not None:
                    progress()
            rows.append({"length": length, "multiplier": m, "mode": mode,
                         "ppl": math.exp(nll / tok) if tok else float("nan"),
                         "nll": nll / tok if tok else float("nan"), "tokens": tok, "docs": ok,
                         "failures": bad, "skipped_short": len(docs) - len(usable)})
    return {"rows": rows, "failures": failures, "paired": paired_gaps(per_doc)}


def paired_gaps(per_doc: dict) -> list[dict]:
    """Per length: swapped - own NLL per token over the documents both modes scored."""
    out = []
    for (length, mode), own in sorted(per_doc.items()):
        if mode != "lcirc" or (length, "lcirc_swapped") not in per_doc:
            continue
        sw = per_doc[(length, "lcirc_swapped")]
        gaps = [sw[i] - own[i] for i in sorted(own) if i in sw]
        n = len(gaps)
        mean = sum(gaps) / n if n else float("nan")
        sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (n - 1)) if n > 1 else float("nan")
        out.append({"length": length, "docs": n, "mean_gap": mean, "se": sd / math.sqrt(n) if n > 1 else float("nan"),
                    "own_better": sum(g > 0 for g in gaps)})
    return out
