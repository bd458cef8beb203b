"""Autoregressive decoding for LCIRCForCausalLM.

Prefill runs the prompt once; every later step feeds one token per row through the base model's
self-attention KV cache. The memory's GCA keys/values are projected once (and cached in the
memory); `use_cache=False` recomputes everything at every step (the reference behaviour), which
the tests use as the oracle.
"""
from __future__ import annotations

import inspect
import math
import numbers

import torch
from transformers import DynamicCache

from ..errors import ConfigError, DataError
from .checks import check_ids, check_like


def _filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p      # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


def _next_token(logits, do_sample, temperature, top_k, top_p, generator):
    logits = logits.float()
    if not do_sample:
        return logits.argmax(-1)
    logits = _filter_logits(logits / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_options(max_new_tokens, do_sample, temperature, top_k, top_p, use_cache, generator):
    """Types and ranges of the decoding options (ConfigError naming the option and value)."""
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    for name, flag in (("do_sample", do_sample), ("use_cache", use_cache)):
        if not isinstance(flag, bool):
            raise ConfigError(f"{name} must be True or False, got {flag!r}")
    if not _is_number(temperature):
        raise ConfigError(f"temperature must be a finite number, got {temperature!r}")
    if do_sample and not temperature > 0:
        raise ConfigError(f"temperature must be > 0 when sampling, got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ConfigError(f"top_k must be an int >= 1 (or None: no top-k filter), got {top_k!r}")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise ConfigError(f"top_p must be a number in (0, 1] (or None: no nucleus filter), got "
                          f"{top_p!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator must be a torch.Generator or None, got "
                          f"{type(generator).__name__}")


def _token_ids(value, name: str, vocab_size: int) -> list[int]:
    """None, an id, or a non-empty list / tuple / integer tensor of ids -> list of ids."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor) and not value.is_floating_point() \
            and value.dtype != torch.bool and value.dim() <= 1:
        value = value.tolist()
    items = [value] if not isinstance(value, (list, tuple)) else list(value)
    if not items or not all(_is_int(i) for i in items):
        raise ConfigError(f"{name} must be a token id (int), a non-empty list of ids, or None; "
                          f"got {value!r}")
    bad = [int(i) for i in items if not 0 <= i < vocab_size]
    if bad:
        raise ConfigError(f"{name} holds token id {bad[0]} outside the vocabulary "
                          f"[0, {vocab_size})")
    return [int(i) for i in items]


def takes_logits_to_keep(base) -> bool:
    """Whether the base model's forward takes `logits_to_keep` (compute the last n positions'
    logits only)."""
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False
    return "logits_to_keep" in params


def _last_logits_only(base) -> dict:
    """{"logits_to_keep": 1} when the base model's forward takes it (only the last position's
    logits are read, so the prompt's other rows skip the vocabulary projection), else {}."""
    return {"logits_to_keep": 1} if takes_logits_to_keep(base) else {}


def generate(model, input_ids: torch.Tensor, memory=None, attention_mask=None,
             max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
    """Greedy or sampled decoding.

    Args:
        input_ids: int64 [B, T] prompts; left-pad rows of different lengths and pass
            `attention_mask` [B, T] (1 = token, 0 = padding).
        memory: CompressedMemory with batch B (or 1) or None (plain base model).
        eos_token_id: stop a row at this id (or any of these ids); finished rows are filled
            with `pad_token_id` (default: the first eos id).
        use_cache: False recomputes the whole sequence, and the memory K/V, at every step.
    Returns:
        int64 [B, T + n] with n <= max_new_tokens (fewer when every row has finished).
    """
    ids = check_ids(input_ids, "input_ids", model.device, model.config.vocab_size, allow_1d=False)
    steps = list(stream(model, ids, memory=memory, attention_mask=attention_mask,
                        max_new_tokens=max_new_tokens, do_sample=do_sample,
                        temperature=temperature, top_k=top_k, top_p=top_p,
                        eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                        generator=generator, use_cache=use_cache))
    return torch.cat([ids] + [t[:, None] for t in steps], 1)


def stream(model, input_ids: torch.Tensor, memory=None, attention_mask=None,
           max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None,
           eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
           generator: torch.Generator | None = None, use_cache: bool = True,
           memory_kv: tuple[dict, torch.Tensor | None] | None = None):
    """`generate` one step at a time: yields the next tokens, int64 [B], after each step.

    `memory_kv` = ({layer: (k, v)}, lengths or None) reads an already projected memory
    (`LCIRCForCausalLM.memory_kv`, rows padded and masked by `lengths`) instead of `memory`.
    The memory is published only around each base-model call, never across a yield.
    """
    ids = check_ids(input_ids, "input_ids", model.device, model.config.vocab_size, allow_1d=False)
    _check_options(max_new_tokens, do_sample, temperature, top_k, top_p, use_cache, generator)
    if memory is not None and memory_kv is not None:
        raise ConfigError("pass memory or memory_kv, not both")
    vocab = model.config.vocab_size
    eos = _token_ids(eos_token_id, "eos_token_id", vocab)
    pads = _token_ids(pad_token_id, "pad_token_id", vocab)
    if len(pads) > 1:
        raise ConfigError(f"pad_token_id must be one token id, got {pad_token_id!r}")
    b = ids.shape[0]
    if attention_mask is None:
        attention_mask = torch.ones_like(ids)
    attention_mask = check_like(attention_mask, ids, "attention_mask")
    if bool(((attention_mask != 0) & (attention_mask != 1)).any()):
        raise DataError("attention_mask must hold 0 (padding) and 1 (token)")
    attention_mask = attention_mask.long()
    if bool((attention_mask.sum(-1) == 0).any()):
        raise DataError("attention_mask masks out every token of some prompt")
    if memory is not None:
        model.check_memory(memory, b)
    pad = pads[0] if pads else (eos[0] if eos else 0)
    eos_t = torch.tensor(eos, device=ids.device, dtype=torch.long)
    finished = torch.zeros(b, dtype=torch.bool, device=ids.device)
    base = model.base
    cache_kw = model.cache_kwarg

    def positions(mask):
        return (mask.cumsum(-1) - 1).clamp(min=0)

    def injected():
        if memory_kv is not None:
            return model.injection.using(*memory_kv)
        return model.injection.active(memory, use_cache=use_cache)

    cache = DynamicCache(config=base.config) if use_cache else None
    cache_arg = {cache_kw: cache} if use_cache else {}
    cache_arg.update(_last_logits_only(base))
    out = ids
    for step in range(max_new_tokens):
        pos = positions(attention_mask)
        feed = out
        if use_cache and step > 0:                 # the KV cache holds everything before
            feed, pos = out[:, -1:], pos[:, -1:]
        with torch.no_grad(), injected():
            logits = base(input_ids=feed, attention_mask=attention_mask, position_ids=pos,
                          use_cache=use_cache, **cache_arg).logits
            nxt = _next_token(logits[:, -1], do_sample, temperature, top_k, top_p, generator)
        nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
        out = torch.cat([out, nxt[:, None]], 1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(b, 1)], 1)
        yield nxt
        if eos:
            finished |= torch.isin(nxt, eos_t)
            if bool(finished.all()):
                return
