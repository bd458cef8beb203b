"""Measured sweep over context lengths: LCIRC vs full attention vs the eager reference.

Per length, in one process and on the same random-weight model:
    * prefill: LCIRC (compress the first N - window tokens, then the window forward with GCA)
      vs full attention (the base model over all N tokens, SDPA) vs the eager reference
      (`reference.py`); logits for the last position only;
    * decode: tokens/s with the memory K/V projected once vs re-projected at every token;
    * training step: LCIRC compress + window forward + backward under a BPTT policy.
Analytic FLOPs (`lcirc_fast.flops`) are reported next to every measurement.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .. import flops as fl
from .measure import PeakMemory, timed
from .presets import Preset
from .reference import reference_compress, reference_forward


@dataclass
class SweepOptions:
    lengths: Sequence[int]
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    decode_tokens: int = 8
    train: bool = True
    train_policy: str = "selective:8"
    reference: bool = True
    repeats: int = 1
    seed: int = 0


def check_lengths(lengths: Sequence[int]) -> list[int]:
    if not lengths:
        raise ValueError("--lengths is empty")
    bad = [n for n in lengths if not isinstance(n, int) or n < 1]
    if bad:
        raise ValueError(f"--lengths must be positive token counts, got {bad}")
    return sorted(set(lengths))


def build_model(preset: Preset, device: str, dtype: torch.dtype, seed: int = 0):
    """Random-weight base of the preset's family (SDPA) wrapped in LCIRCForCausalLM; gates set
    to 0.5."""
    from .. import LCIRCForCausalLM
    from ..models.base_loader import random_base

    torch.manual_seed(seed)
    base = random_base(preset.hf_config(), dtype).to(device).eval()
    model = LCIRCForCausalLM.from_base(base, preset.lcirc_config()).to(device).eval()
    with torch.no_grad():
        for blk in model.gca.values():
            blk.attn_gate.fill_(0.5)
            blk.ff_gate.fill_(0.5)
    return model


def _policy(name: str):
    from .. import bptt

    kind, arg, replace = fl._policy_parts(name)
    if kind == "full":
        return bptt.Full()
    if kind == "truncated":
        return bptt.Truncated(arg)
    return bptt.Selective(arg, generator=torch.Generator().manual_seed(0), replace=replace)


def _decode_rate(model, window_ids, mem, n_tokens: int, cached: bool, device) -> float:
    """Tokens/s of greedy decoding after a window prefill (self-attention KV cache on)."""
    from transformers import DynamicCache

    base = model.base
    key = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
    cache = DynamicCache(config=base.config)
    t = window_ids.shape[1]
    with model.inject(mem, 1, use_cache=True):
        logits = base(input_ids=window_ids, use_cache=True, logits_to_keep=1,
                      **{key: cache}).logits
    nxt = logits[:, -1:].argmax(-1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for i in range(n_tokens):
        pos = torch.tensor([[t + i]], device=device)
        with model.inject(mem, 1, use_cache=cached):
            logits = base(input_ids=nxt, position_ids=pos, use_cache=True, **{key: cache}).logits
        nxt = logits[:, -1:].argmax(-1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return n_tokens / (time.perf_counter() - t0)


def run_sweep(preset: Preset, opts: SweepOptions,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every workload at every length; returns {"rows": [...], "meta": {...}}."""
    lengths = check_lengths(list(opts.lengths))
    device = torch.device(opts.device)
    tick = progress or (lambda msg: None)
    model = build_model(preset, opts.device, opts.dtype, opts.seed)
    base = model.base
    llm, shape = preset.llm, preset.shape()
    w = preset.window
    wb = torch.empty((), dtype=opts.dtype).element_size()
    gen = torch.Generator().manual_seed(opts.seed)
    rows = []
    for n in lengths:
        ids = torch.randint(0, llm.vocab_size, (1, n), generator=gen).to(device)
        ctx, win = ids[:, : max(0, n - w)], ids[:, max(0, n - w):]
        sp = fl.split(shape, n)
        row: dict[str, Any] = {"tokens": n, "segments": len(sp.segments), "memory": sp.memory,
                               "window": sp.window}
        for conv in fl.CAUSAL_CONVENTIONS:
            row[f"flops_lcirc_{conv}"] = fl.lcirc_prefill(llm, shape, n, conv, 1, wb).flops
            row[f"flops_full_{conv}"] = fl.full_prefill(llm, n, conv, 1, wb).flops

        def lcirc_prefill():
            with torch.no_grad():
                mem = model.compress(ctx) if ctx.shape[1] else None
                return model(win, memory=mem, logits_to_keep=1).logits

        def full_prefill():
            with torch.no_grad():
                return base(input_ids=ids, logits_to_keep=1).logits

        def ref_prefill():
            with torch.no_grad():
                if not ctx.shape[1]:
                    return base(input_ids=win, logits_to_keep=1).logits
                return reference_forward(model, win, reference_compress(model, ctx),
                                         logits_to_keep=1).logits

        tick(f"{n} tokens: full attention prefill")
        row["full_s"], _, row["full_peak_bytes"] = timed(full_prefill, device, opts.repeats)
        tick(f"{n} tokens: LCIRC prefill")
        row["lcirc_s"], _, row["lcirc_peak_bytes"] = timed(lcirc_prefill, device, opts.repeats)
        if opts.reference:
            tick(f"{n} tokens: eager reference prefill")
            row["reference_s"], _, row["reference_peak_bytes"] = timed(ref_prefill, device,
                                                                       opts.repeats, warmup=0)
        if opts.decode_tokens and ctx.shape[1]:
            tick(f"{n} tokens: decode")
            with torch.no_grad():
                mem = model.compress(ctx)
                _decode_rate(model, win, mem, 1, True, device)  # warm-up
                row["decode_cached_tok_s"] = _decode_rate(model, win, mem, opts.decode_tokens,
                                                          True, device)
                row["decode_recompute_tok_s"] = _decode_rate(model, win, mem, opts.decode_tokens,
                                                             False, device)
            row["flops_decode_cached"] = fl.lcirc_decode_token(llm, shape, n, True).flops
            row["flops_decode_recompute"] = fl.lcirc_decode_token(llm, shape, n, False).flops
        if opts.train and ctx.shape[1]:
            tick(f"{n} tokens: training step")
            policy = _policy(opts.train_policy)

            def train_step():
                model.zero_grad(set_to_none=True)
                mem = model.compress(ctx, bptt=policy)
                loss = model(win, memory=mem, labels=win).loss
                loss.backward()
                return float(loss.detach())

            with torch.enable_grad():
                row["train_s"], _, row["train_peak_bytes"] = timed(train_step, device,
                                                                   opts.repeats)
            model.zero_grad(set_to_none=True)
            row["flops_train"] = fl.train_step(llm, shape, n, opts.train_policy, "half", wb).flops
        row["speedup"] = row["full_s"] / row["lcirc_s"]
        rows.append(row)
    return {"rows": rows, "meta": _meta(preset, opts, device, PeakMemory(device).method)}


def _meta(preset: Preset, opts: SweepOptions, device: torch.device, mem_method: str) -> dict:
    import platform

    import transformers

    meta = {
        "preset": preset.name, "llm": dataclasses.asdict(preset.llm),
        "lcirc": {k: v for k, v in dataclasses.asdict(preset.shape()).items()},
        "window": preset.window, "device": str(device), "dtype": str(opts.dtype),
        "decode_tokens": opts.decode_tokens, "train_policy": opts.train_policy,
        "repeats": opts.repeats, "memory_method": mem_method,
        "prefill_logits": "last position only (logits_to_keep=1) for every method",
        "reference": "eager: per-layer K/V, einsum softmax attention, per-block memory K/V"
        if opts.reference else None,
        "decode_recompute": "memory K/V re-projected at every token (model.inject(..., "
                            "use_cache=False)); self-attention KV cache on in both",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }
    if device.type == "cuda":
        meta["machine"]["gpu"] = torch.cuda.get_device_name(device)
    return meta


def crossover(rows: list[dict], key_a: str = "lcirc_s", key_b: str = "full_s") -> int | None:
    """Smallest compressed length (memory > 0) from which `key_a` stays below `key_b`."""
    best = None
    for r in reversed(rows):
        if r["memory"] > 0 and key_a in r and key_b in r and r[key_a] < r[key_b]:
            best = r["tokens"]
        else:
            break
    return best
