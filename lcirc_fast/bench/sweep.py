"""Measured sweep over context lengths: LCIRC vs full attention vs the eager reference.

Per length, in one process and on the same random-weight model, every method is timed with
`timing.measure` (uncounted warm-up, >= `repeats` timed runs, the methods interleaved):
    * full: the base model over all N tokens (SDPA), last-position logits;
    * lcirc: compress the first N - window tokens, then the window forward with GCA;
    * compress / window: the two parts of lcirc, timed on their own (where the time goes);
    * reference: the eager re-implementation (`reference.py`) of the lcirc prefill;
    * decode_cached / decode_recompute: greedy decoding after a window prefill, memory K/V
      projected once vs at every token (the prefill is set-up, not timed);
    * train: compress + window forward + backward under a BPTT policy.
Peak memory of full, lcirc, reference and train is measured once per length in isolation
(`memprobe`, CPU; CUDA: the allocator's peak during the first warm-up run).
The machine's GEMM rate is measured at the start and the end with the compressor's K/V
product shape; the compressor's achieved FLOP/s (analytic matmul FLOPs of
`lcirc_fast.flops.compress` over the compress median) is reported as a fraction of it.
CPU time of other processes during each length's timing is reported as competing load.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .. import flops as fl
from . import memprobe
from .checks import MEMORY_METHODS, self_check
from .measure import CUDA_MEMORY_METHOD, PeakMemory
from .presets import Preset
from .reference import reference_compress, reference_forward
from .timing import CpuLoad, TimingPolicy, Workload, choose_threads, combine_loads, measure, physical_cores


@dataclass
class SweepOptions:
    """repeats: minimum timed runs per method and length (more when a run is short, up to
    max_repeats, aiming at target_s timed seconds); threads: torch CPU threads (None: the
    physical cores); memory: measure peak memory; gemm: measure the GEMM rate."""

    lengths: Sequence[int]
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    decode_tokens: int = 8
    train: bool = True
    train_policy: str = "selective:8"
    reference: bool = True
    repeats: int = 3
    seed: int = 0
    threads: int | None = None
    memory: bool = True
    gemm: bool = True
    warmup_s: float = 0.1
    target_s: float = 0.3
    max_repeats: int = 30

    def timing_policy(self) -> TimingPolicy:
        return TimingPolicy(min_repeats=self.repeats, max_repeats=max(self.max_repeats,
                                                                      self.repeats),
                            warmup_s=self.warmup_s, target_s=self.target_s)


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

    return bptt.from_spec(name, generator=torch.Generator().manual_seed(0), key="--train-policy")


def _cache_key(base) -> str:
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _sync_fn(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _decode_setup(model, window_ids, mem):
    """Window prefill with the self-attention KV cache (memory K/V cached): (cache, next id)."""
    from transformers import DynamicCache

    base = model.base
    cache = DynamicCache(config=base.config)
    with torch.no_grad(), model.inject(mem, 1, use_cache=True):
        logits = base(input_ids=window_ids, use_cache=True, logits_to_keep=1,
                      **{_cache_key(base): cache}).logits
    return cache, logits[:, -1:].argmax(-1)


def _decode_run(model, t: int, mem, n_tokens: int, cached: bool, state):
    """Greedy decoding of n_tokens after a t-token window prefill (`_decode_setup`)."""
    base, key = model.base, _cache_key(model.base)
    cache, nxt = state
    with torch.no_grad():
        for i in range(n_tokens):
            pos = torch.tensor([[t + i]], device=nxt.device)
            with model.inject(mem, 1, use_cache=cached):
                logits = base(input_ids=nxt, position_ids=pos, use_cache=True,
                              **{key: cache}).logits
            nxt = logits[:, -1:].argmax(-1)
    return nxt


def _decode_rate(model, window_ids, mem, n_tokens: int, cached: bool, device) -> float:
    """Tokens/s of greedy decoding after a window prefill (self-attention KV cache on)."""
    device = torch.device(device)
    wl = Workload(lambda s: _decode_run(model, window_ids.shape[1], mem, n_tokens, cached, s),
                  setup=lambda: _decode_setup(model, window_ids, mem))
    return n_tokens / wl.once(_sync_fn(device))


def sweep_ids(preset: Preset, n: int, seed: int, device) -> torch.Tensor:
    """The [1, n] token ids of length n (the same in every process of a run)."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + n)
    return torch.randint(0, preset.llm.vocab_size, (1, n), generator=gen).to(device)


def workloads(model, preset: Preset, n: int, opts: SweepOptions) -> dict[str, Workload]:
    """The timed methods at length n (see the module doc), in their interleaving order."""
    device = torch.device(opts.device)
    base, w = model.base, preset.window
    ids = sweep_ids(preset, n, opts.seed, device)
    ctx, win = ids[:, : max(0, n - w)], ids[:, max(0, n - w):]
    has_ctx = ctx.shape[1] > 0
    memo: dict[str, Any] = {}

    def mem():
        if "mem" not in memo:
            with torch.no_grad():
                memo["mem"] = model.compress(ctx)
        return memo["mem"]

    def full():
        with torch.no_grad():
            return base(input_ids=ids, logits_to_keep=1).logits

    def lcirc():
        with torch.no_grad():
            m = model.compress(ctx) if has_ctx else None
            return model(win, memory=m, logits_to_keep=1).logits

    out = {"full": Workload(full), "lcirc": Workload(lcirc)}
    if has_ctx:
        def compress():
            with torch.no_grad():
                return model.compress(ctx)

        def window(m):
            with torch.no_grad():
                return model(win, memory=m, logits_to_keep=1).logits

        out["compress"] = Workload(compress)
        out["window"] = Workload(window, setup=mem)
    if opts.reference:
        def reference():
            with torch.no_grad():
                if not has_ctx:
                    return base(input_ids=win, logits_to_keep=1).logits
                return reference_forward(model, win, reference_compress(model, ctx),
                                         logits_to_keep=1).logits

        out["reference"] = Workload(reference)
    if opts.decode_tokens and has_ctx:
        t = win.shape[1]
        for name, cached in (("decode_cached", True), ("decode_recompute", False)):
            out[name] = Workload(
                lambda s, cached=cached: _decode_run(model, t, mem(), opts.decode_tokens,
                                                     cached, s),
                setup=lambda: _decode_setup(model, win, mem()), units=opts.decode_tokens)
    if opts.train and has_ctx:
        def train_setup():
            model.zero_grad(set_to_none=True)
            return _policy(opts.train_policy)

        def train(policy):
            with torch.enable_grad():
                m = model.compress(ctx, bptt=policy)
                loss = model(win, memory=m, labels=win).loss
                loss.backward()
                return float(loss.detach())

        out["train"] = Workload(train, setup=train_setup)
    return out


# ------------------------------------------------------------------------------------ GEMM
def gemm_shape(model, preset: Preset, longest: int) -> tuple[int, int, int]:
    """(M, K, N) of the compressor's largest K/V product at the longest length: M rows (the
    segments one product covers, `Recurrence.hoist_limit`, x the segment length) of width K = d,
    times all layers' folded K/V weight (N columns)."""
    shape = preset.shape()
    sp = fl.split(shape, longest)
    seg = max(sp.segments) if sp.segments else shape.config.segment_len
    per_product = min(model.recurrence.hoist_limit(1, seg), max(1, len(sp.segments)))
    return seg * per_product, shape.config.hidden_size, model.compressor.kv_width


def gemm_workload(shape: tuple[int, int, int], device, dtype: torch.dtype) -> Workload:
    """The plain product x [M, K] @ W[N, K]^T (the K/V product's operands and layout, without
    its bias), written into a preallocated output, so that its time is the product's alone (no
    page faults of a fresh output)."""
    m, k, n = shape
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(m, k, generator=gen).to(device, dtype)
    wt = torch.randn(n, k, generator=gen).to(device, dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    return Workload(lambda: torch.mm(x, wt.t(), out=out))


def gemm_rate(shape: tuple[int, int, int], device, dtype: torch.dtype,
              policy: TimingPolicy) -> dict[str, Any]:
    """FLOP/s of `gemm_workload(shape)`: the machine's matrix-multiply rate at that shape."""
    m, k, n = shape
    res = measure({"gemm": gemm_workload(shape, device, dtype)}, policy,
                  sync=_sync_fn(torch.device(device)))
    st = res.stats()["gemm"]
    flops = 2 * m * k * n
    return {"shape": [m, k, n], "flops": flops, "stats": st, "flop_s": flops / st["median"]}


# ------------------------------------------------------------------------------------ sweep
def _row_from(n: int, preset: Preset, opts: SweepOptions, stats: dict, wb: int) -> dict:
    llm, shape = preset.llm, preset.shape()
    sp = fl.split(shape, n)
    row: dict[str, Any] = {"tokens": n, "segments": len(sp.segments), "memory": sp.memory,
                           "window": sp.window, "timing": stats}
    for conv in fl.CAUSAL_CONVENTIONS:
        row[f"flops_lcirc_{conv}"] = fl.lcirc_prefill(llm, shape, n, conv, 1, wb).flops
        row[f"flops_full_{conv}"] = fl.full_prefill(llm, n, conv, 1, wb).flops
    for key, name in (("full_s", "full"), ("lcirc_s", "lcirc"), ("reference_s", "reference"),
                      ("compress_s", "compress"), ("window_s", "window"), ("train_s", "train")):
        if name in stats:
            row[key] = stats[name]["median"]
    for name in ("decode_cached", "decode_recompute"):
        if name in stats:
            row[f"{name}_tok_s"] = opts.decode_tokens / stats[name]["median"]
    if "decode_cached" in stats:
        row["flops_decode_cached"] = fl.lcirc_decode_token(llm, shape, n, True).flops
        row["flops_decode_recompute"] = fl.lcirc_decode_token(llm, shape, n, False).flops
    if "train" in stats:
        row["flops_train"] = fl.train_step(llm, shape, n, opts.train_policy, "half", wb).flops
    f, lc = stats["full"], stats["lcirc"]
    row["speedup"] = f["median"] / lc["median"]
    row["speedup_range"] = [f["min"] / lc["max"], f["max"] / lc["min"]]
    if "compress" in stats:
        cf = fl.compress(shape, sp.compressed, wbytes=wb)
        row["compressor"] = {"tokens": sp.compressed, "matmul_flops": cf.matmul,
                             "flop_s": cf.matmul / stats["compress"]["median"]}
        parts = {"compress": stats["compress"]["median"], "window": stats["window"]["median"]}
        if "decode_cached" in stats:
            parts["decode"] = stats["decode_cached"]["median"]
        total = sum(parts.values())
        row["breakdown"] = {"seconds": parts,
                            "share": {k: v / total for k, v in parts.items()},
                            "decode_tokens": opts.decode_tokens if "decode" in parts else 0}
    return row


def run_sweep(preset: Preset, opts: SweepOptions,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every workload at every length; returns {"rows", "meta", "flags"}."""
    lengths = check_lengths(list(opts.lengths))
    device = torch.device(opts.device)
    tick = progress or (lambda msg: None)
    threads_reason = "set by the caller"
    if device.type == "cpu":
        if opts.threads is None:
            n_threads, threads_reason = choose_threads()
            torch.set_num_threads(n_threads)
        else:
            torch.set_num_threads(opts.threads)
            threads_reason = "--threads"
    threads = torch.get_num_threads()
    opts = dataclasses.replace(opts, threads=threads)
    probe = None
    if opts.memory and device.type == "cpu":
        tick("starting the memory probe")
        probe = memprobe.ForkedProbe({"preset": preset, "opts": opts, "threads": threads})
    try:
        return _run(preset, opts, lengths, device, tick, probe, threads_reason)
    finally:
        if probe is not None:
            probe.close()


def _run(preset, opts, lengths, device, tick, probe, threads_reason) -> dict[str, Any]:
    model = build_model(preset, opts.device, opts.dtype, opts.seed)
    wb = torch.empty((), dtype=opts.dtype).element_size()
    policy = opts.timing_policy()
    sync = _sync_fn(device)
    gemm: dict[str, Any] = {}
    if opts.gemm:
        shape = gemm_shape(model, preset, lengths[-1])
        tick(f"GEMM rate {shape[0]}x{shape[1]}x{shape[2]}")
        gemm["start"] = gemm_rate(shape, device, opts.dtype, policy)
    rows, loads = [], []
    for n in lengths:
        wls = workloads(model, preset, n, opts)
        tick(f"{n} tokens: timing {', '.join(wls)}")
        peak_ctx = (lambda: PeakMemory(device)) if device.type == "cuda" and opts.memory \
            else None
        with CpuLoad() as load:
            res = measure(wls, policy, sync=sync, around_first=peak_ctx)
        stats = res.stats()
        row = _row_from(n, preset, opts, stats, wb)
        row["interleaving"] = res.order
        row["warmup_runs"] = res.warmups
        row["load"] = load.result
        loads.append(load.result)
        if opts.memory:
            for name in MEMORY_METHODS:
                if name not in wls:
                    continue
                if device.type == "cuda":
                    row[f"{name}_peak_bytes"] = res.first_run.get(name)
                elif probe is not None:
                    tick(f"{n} tokens: peak memory of {name}")
                    row[f"{name}_peak_bytes"] = probe.measure(name, n)
        rows.append(row)
        del wls
        model.zero_grad(set_to_none=True)
    if opts.gemm:
        tick("GEMM rate (end of run)")
        gemm["end"] = gemm_rate(gemm["start"]["shape"], device, opts.dtype, policy)
        gemm["flop_s"] = max(gemm["start"]["flop_s"], gemm["end"]["flop_s"])
        for row in rows:
            if "compressor" in row:
                row["compressor"]["gemm_fraction"] = row["compressor"]["flop_s"] / gemm["flop_s"]
    meta = _meta(preset, opts, device)
    meta["threads"] = {"count": torch.get_num_threads(), "reason": threads_reason,
                       "physical_cores": physical_cores(), "cpu_count": os.cpu_count()}
    meta["timing_method"] = policy.describe()
    meta["load"] = combine_loads(loads)
    meta["gemm"] = gemm or None
    if opts.memory:
        meta["memory_method"] = CUDA_MEMORY_METHOD + " (first warm-up run)" \
            if device.type == "cuda" else memprobe.METHOD
        if probe is not None and probe.error:
            meta["memory_error"] = probe.error
    else:
        meta["memory_method"] = None
    return {"rows": rows, "meta": meta, "flags": self_check(rows, meta)}


def _meta(preset: Preset, opts: SweepOptions, device: torch.device) -> dict:
    import platform

    import transformers

    meta = {
        "preset": preset.name, "llm": dataclasses.asdict(preset.llm),
        "lcirc": preset.lcirc_config().to_dict(),
        "window": preset.window, "device": str(device), "dtype": str(opts.dtype),
        "decode_tokens": opts.decode_tokens, "train_policy": opts.train_policy,
        "repeats": opts.repeats, "max_repeats": opts.max_repeats,
        "warmup_s": opts.warmup_s, "target_s": opts.target_s,
        "prefill_logits": "last position only (logits_to_keep=1) for every method",
        "reference": "eager: per-layer K/V, einsum softmax attention, per-block memory K/V"
        if opts.reference else None,
        "decode_recompute": "memory K/V re-projected at every token (model.inject(..., "
                            "use_cache=False)); self-attention KV cache on in both",
        "compressor_fraction": "analytic matmul FLOPs of compression (lcirc_fast.flops."
                               "compress) / compress median / GEMM rate of the K/V product "
                               "shape (the higher of the start and end measurements)",
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
