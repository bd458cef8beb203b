"""Answer generation for long prompts: head + tail in the window, the middle compressed."""
from __future__ import annotations

import torch

from ..data.truncation import head_tail
from ..segmenting import balanced_boundaries

GEN_MODES = ("base", "lcirc", "qd", "full")


@torch.no_grad()
def generate_answer(model, tokenizer, prompt_ids: torch.Tensor, window: int, max_new_tokens: int,
                    mode: str, query_ids: torch.Tensor | None = None, segment_len: int = 2048,
                    max_full_tokens: int = 8192, memory_from: torch.Tensor | None = None) -> str:
    """Greedy answer text for a prompt (int64 [n]).

    The LLM window is w = window - max_new_tokens. A prompt of at most w tokens is read whole,
    with no memory, in every mode. Longer prompts: "base" reads head w/2 + tail w/2 only;
    "lcirc" also compresses the middle; "qd" does so with `query_ids` fed to the mixer; "full"
    reads the whole prompt (refused beyond `max_full_tokens`).

    `memory_from` (a control, modes "lcirc" and "qd"): another prompt (int64 [m]) whose middle is
    compressed instead of this prompt's; both prompts must be longer than w.
    """
    if mode not in GEN_MODES:
        raise ValueError(f"mode must be one of {GEN_MODES}, got {mode!r}")
    w = window - max_new_tokens
    if w < 2:
        raise ValueError(f"window {window} leaves no room for a prompt with max_new_tokens={max_new_tokens}")
    dev = model.device
    memory = None
    if mode == "full":
        if prompt_ids.numel() + max_new_tokens > max_full_tokens:
            raise ValueError(f"full attention over {prompt_ids.numel()} tokens exceeds "
                             f"max_full_tokens={max_full_tokens}")
        llm = prompt_ids
    else:
        ht = head_tail(prompt_ids, w)
        llm = ht.llm_ids
        middle = ht.middle
        if memory_from is not None:
            if mode not in ("lcirc", "qd"):
                raise ValueError(f"memory_from needs mode 'lcirc' or 'qd', got {mode!r}")
            other = head_tail(memory_from, w)
            if not (ht.truncated and other.truncated):
                raise ValueError(f"memory_from needs both prompts longer than the {w}-token window "
                                 f"(got {prompt_ids.numel()} and {memory_from.numel()} tokens)")
            middle = other.middle
        if ht.truncated and mode in ("lcirc", "qd"):
            q = None
            if mode == "qd":
                if not model.config.query_dependent or query_ids is None:
                    raise ValueError("mode 'qd' needs a query-dependent model and query_ids")
                q = query_ids.to(dev)[None]
            mid = middle.to(dev)[None]
            memory = model.compress(mid, boundaries=balanced_boundaries(mid.shape[1], segment_len), query_ids=q)
    out = model.generate(llm.to(dev)[None], memory=memory, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id if tokenizer is not None else None)
    new = out[0, llm.numel():]
    if tokenizer is None:
        return " ".join(map(str, new.tolist()))
    return tokenizer.decode(new, skip_special_tokens=True)
