"""End-to-end and long-compression workloads of the GPU suite (same folder; imported lazily).

* `run_e2e`: a random-weight LCIRC model at a preset's shapes (Llama-2-7B on the GPU), the
  `lcirc bench` sweep length by length (prefill LCIRC vs full attention with SDPA, decoding with
  cached vs re-projected memory K/V) under a deadline: a length whose estimated cost (scaled from
  the previous length by the analytic FLOPs) does not fit the time left, or whose estimated peak
  memory does not fit the free device memory, is skipped and listed. The decode point at
  `decode_memory` memory vectors (3200: 50 segments of 2048) is always in the sweep. The LCIRC
  prefill of each length is also timed on every other available backend.
* `run_compress`: compress one long document (128K tokens on the GPU) with the paper's compressor
  built over an embedding table only (no LLM layers), for each available backend, with and
  without CUDA graphs and with the default or a 16-segment K/V hoist; reports achieved TFLOP/s
  over the FLOPs that `lcirc_fast.flops.compress` counts and the fraction of `peak_tflops`.

The available backends are those of `lcirc_fast.ops.registry.available_backends` (torch, triton,
and cuda when the extension is built). Both check correctness first (`memory_oracle` on every
backend, plus each backend's prefill logits against torch's for `run_e2e` and CUDA graphs on vs
off for `run_compress`) and return no measurements when it fails. Timing goes through
`lcirc_fast.bench.timing`.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn as nn

DEFAULT_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)


# ------------------------------------------------------------------------------- helpers
def _syncer(device) -> Callable[[], None]:
    dev = torch.device(device)
    return (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in fp64 (inf when a holds a NaN/inf)."""
    a, b = a.double(), b.double()
    if not bool(torch.isfinite(a).all()):
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _slack(dtype: torch.dtype) -> float:
    return 1e-3 if dtype in (torch.bfloat16, torch.float16) else 1e-5


def _median_time(fn: Callable, device, repeats: int) -> tuple[float, object]:
    """(median seconds of `repeats` timed runs after one uncounted warm-up run, last result), by
    `lcirc_fast.bench.timing.measure` (the previous result is freed before each run)."""
    from lcirc_fast.bench.timing import TimingPolicy, Workload, measure

    last: dict = {}

    def run(_):
        last["out"] = fn()

    policy = TimingPolicy(min_repeats=repeats, max_repeats=repeats, warmup_s=0.0)
    res = measure({"fn": Workload(run, setup=last.clear)}, policy, sync=_syncer(device))
    return res.stats()["fn"]["median"], last["out"]


def _available(device) -> tuple[str, ...]:
    """Every backend that runs on `device` here (torch, triton, and cuda when built)."""
    from lcirc_fast.ops.registry import available_backends

    return available_backends(device)


def _randomize_norms(model, seed: int = 1) -> None:
    """LayerNorm affines away from (1, 0), so the folded-K/V path is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.compressor.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.02 * torch.randn(m.bias.shape, generator=g))


def _upcast(model, dtype: torch.dtype):
    """The parts `reference_compress` reads (config, compressor, latents, embeddings) in dtype."""
    emb = nn.Embedding.from_pretrained(model.base.get_input_embeddings().weight.detach().to(dtype))
    return SimpleNamespace(config=model.config,
                           compressor=copy.deepcopy(model.compressor).to(dtype),
                           latents=model.latents.detach().to(dtype),
                           base=SimpleNamespace(get_input_embeddings=lambda: emb))


def memory_oracle(model, ids: torch.Tensor, backends=None) -> dict:
    """Error-ratio check of `model.compress` per backend (default: every available one).

    The memory of each backend (model dtype) and of the eager reference (`reference_compress`,
    model dtype) are compared with the eager reference run at higher precision (fp32, or fp64
    for an fp32 model): ok when err(backend) <= 2 * err(eager) + slack and finite.
    """
    from lcirc_fast.bench.reference import reference_compress

    hi = torch.float64 if model.dtype == torch.float32 else torch.float32
    backends = _available(model.device) if backends is None else backends
    saved = model.config.backend
    with torch.no_grad():
        ref = reference_compress(_upcast(model, hi), ids)
        eager = _rel(reference_compress(model, ids), ref)
        out = {"eager_err": eager, "ok": True}
        for be in backends:
            model.configure(backend=be)
            err = _rel(model.compress(ids).hidden, ref)
            ok = err <= 2 * eager + _slack(model.dtype)
            out[be] = {"err": err, "ok": ok}
            out["ok"] &= ok
    model.configure(backend=saved)
    return out


def logits_oracle(model, ctx: torch.Tensor, win: torch.Tensor, backends=None) -> dict:
    """Window logits with memory: each backend (default: every available one) vs the torch
    backend, against torch vs the eager reference.

    ok when ‖backend − torch‖ <= 2 · ‖torch − eager‖ + slack for every backend (relative norms,
    last 16 positions). Returns {"vs_torch": {backend: error}, "torch_vs_eager", "ok"}.
    """
    from lcirc_fast.bench.reference import reference_compress, reference_forward

    backends = _available(model.device) if backends is None else backends
    saved = model.config.backend
    outs = {}
    with torch.no_grad():
        for be in dict.fromkeys(("torch", *backends)):
            model.configure(backend=be)
            outs[be] = model(win, memory=model.compress(ctx), logits_to_keep=16).logits.float()
        model.configure(backend=saved)
        eager = reference_forward(model, win, reference_compress(model, ctx),
                                  logits_to_keep=16).logits.float()
    d_ref = _rel(outs["torch"], eager)
    vs = {be: _rel(out, outs["torch"]) for be, out in outs.items() if be != "torch"}
    return {"vs_torch": vs, "torch_vs_eager": d_ref,
            "ok": all(d <= 2 * d_ref + _slack(model.dtype) for d in vs.values())}


# ----------------------------------------------------------------------------- end to end
@contextlib.contextmanager
def _reuse_model(model):
    """`run_sweep` builds its own model; for one-length calls it is handed this one instead."""
    from lcirc_fast.bench import sweep

    original = sweep.build_model
    sweep.build_model = lambda *args, **kw: model
    try:
        yield
    finally:
        sweep.build_model = original


def _runs(t: float, policy) -> int:
    """Runs `lcirc_fast.bench.timing.measure` makes of a workload that takes `t` seconds:
    uncounted warm-up (at least one run, `policy.warmup_s` in all) plus the timed repeats."""
    return max(1, math.ceil(policy.warmup_s / max(t, 1e-9) - 1e-9)) + policy.repeats(t)


def _estimate(prev: dict | None, n: int, llm, shape, decode_tokens: int = 0,
              policy=None) -> tuple[float, float | None]:
    """(seconds, peak bytes) of one sweep length, scaled from a measured length `prev`; 20%
    margin. Each timed method of `prev` (its median, `prev["timing"]`) is scaled by the analytic
    FLOPs (full attention: full prefill; decoding: linearly in the length; the rest: LCIRC
    prefill) and counted as many times as the sweep's timing policy runs a workload of that
    length (warm-up + repeats); what `prev` spent outside the timed methods (GEMM rate, setup)
    is added unscaled. A `prev` without per-method timing: twice (warm-up + one run) the full
    and LCIRC prefills plus the rest of its wall time. Peak memory: linear in the length."""
    from lcirc_fast import flops as fl
    from lcirc_fast.bench.sweep import SweepOptions

    if prev is None:
        return 0.0, None
    n0 = prev["tokens"]
    r_full = fl.full_prefill(llm, n).flops / fl.full_prefill(llm, n0).flops
    r_lcirc = fl.lcirc_prefill(llm, shape, n).flops / fl.lcirc_prefill(llm, shape, n0).flops
    timing = prev.get("timing") or {}
    if timing:
        policy = policy or SweepOptions(lengths=[n]).timing_policy()
        warm = prev.get("warmup_runs") or {}
        spent0 = timed = 0.0
        for name, st in timing.items():
            t0 = float(st["median"])
            spent0 += t0 * (int(st.get("n", 1)) + int(warm.get(name, 1)))
            r = r_full if name == "full" else (n / n0 if name.startswith("decode") else r_lcirc)
            timed += t0 * r * _runs(t0 * r, policy)
        secs = 1.2 * (timed + max(0.0, prev["wall_s"] - spent0))
    else:
        prefill0 = 2 * (prev["full_s"] + prev["lcirc_s"])       # warm-up + timed run each
        other = max(0.0, prev["wall_s"] - prefill0, 0.1 * decode_tokens)
        secs = 1.2 * (2 * (prev["full_s"] * r_full + prev["lcirc_s"] * r_lcirc) + other)
    peak = prev.get("full_peak_bytes")
    return secs, None if peak is None else peak * n / n0


def plan_lengths(first: dict, lengths: list[int], must: list[int], seconds: float, llm, shape,
                 decode_tokens: int = 0, policy=None) -> tuple[list[int], list[int]]:
    """(lengths to run, ascending; lengths left out) after the first one was measured.

    `must` lengths (the longest, the decode point) are admitted first, then the rest from the
    longest down, each while the estimated total stays within `seconds`.
    """
    rest = [n for n in lengths if n != first["tokens"]]
    order = [n for n in must if n in rest] + sorted((n for n in rest if n not in must),
                                                    reverse=True)
    chosen, total = [], 0.0
    for n in order:
        est = _estimate(first, n, llm, shape, decode_tokens, policy)[0]
        if total + est <= seconds:
            chosen.append(n)
            total += est
    return sorted(chosen), sorted(set(rest) - set(chosen))


def _kv_projection_ms(model, memory_tokens: int, device, repeats: int = 5) -> float:
    """Milliseconds to project `memory_tokens` memory vectors to every GCA layer's K/V: the
    per-token work that the cached decode path skips."""
    hidden = torch.randn(1, memory_tokens, model.config.hidden_size, device=device,
                         dtype=model.dtype)
    with torch.no_grad():
        secs, _ = _median_time(lambda: model.project_memory_kv(hidden), device, repeats)
    return secs * 1e3


def _time_backends(model, preset, row: dict, opts, backends) -> None:
    """Time the LCIRC prefill of `row`'s length on each of `backends` other than the one the
    sweep ran on (same workload and timing policy as the sweep, backends interleaved round by
    round); adds them to row["timing"] as "lcirc[<backend>]" (so `_estimate` scales them like
    the LCIRC prefill) and sets row["lcirc_s_by_backend"]."""
    from lcirc_fast.bench.sweep import workloads
    from lcirc_fast.bench.timing import Workload, measure

    ran = model.resolved_backend()
    by_backend = {ran: row["lcirc_s"]}
    others = [b for b in backends if b != ran]
    if others:
        lcirc = workloads(model, preset, row["tokens"], opts)["lcirc"]
        wls = {f"lcirc[{b}]": Workload(lambda _: lcirc.run(),
                                       setup=functools.partial(model.configure, backend=b))
               for b in others}
        saved = model.config.backend
        try:
            res = measure(wls, opts.timing_policy(), sync=_syncer(opts.device))
        finally:
            model.configure(backend=saved)
        stats = res.stats()
        row["timing"].update(stats)
        row.setdefault("warmup_runs", {}).update(res.warmups)
        by_backend.update({b: stats[f"lcirc[{b}]"]["median"] for b in others})
    row["lcirc_backend"] = ran
    row["lcirc_s_by_backend"] = by_backend


def run_e2e(out_dir: str | Path | None, lengths=DEFAULT_LENGTHS, preset: str = "llama2-7b",
            device: str = "cuda", dtype: torch.dtype = torch.bfloat16, decode_tokens: int = 16,
            decode_memory: int = 3200, deadline: float | None = None, train: bool = False,
            reference: bool = False, progress: Callable[[str], None] = print,
            sweep_options: dict | None = None, warm_up: bool = True, backends=None) -> dict:
    """Sweep under `deadline` (a `time.perf_counter()` value). Returns {"correct", "rows",
    "skipped", "errors", "decode", "meta", "plot"}; rows and the rest are empty when "correct"
    is not ok.
    `warm_up`: one uncounted pass over the shortest length first (one run per method, no
    memory or GEMM measurement), so that kernel compilation and autotuning stay out of the
    first length's wall time, from which the others are estimated. The shortest length then
    runs; the others are admitted by estimate, the longest and the decode point first
    (`plan_lengths`), and run in increasing order. `sweep_options`: more `SweepOptions` fields
    (e.g. memory=False).
    `backends` (default: every available one on `device`) are checked, and each length's LCIRC
    prefill is timed on every one of them: the sweep runs on the model's own ("auto") backend,
    the others' prefill is timed right after it (`_time_backends`); a row's
    "lcirc_s_by_backend" holds every backend's median.
    Writes e2e.json / e2e.png under `out_dir` (when given) only after a green check; without
    matplotlib there is no e2e.png, and "plot" says so (`lcirc_fast.plotting.written`)."""
    from lcirc_fast import flops as fl
    from lcirc_fast.bench.presets import get_preset
    from lcirc_fast.bench.report import measured_table, plot, write_json
    from lcirc_fast.bench.sweep import SweepOptions, build_model, run_sweep
    from lcirc_fast.plotting import written

    t0 = time.perf_counter()
    tick = lambda m: progress(f"[e2e {time.perf_counter() - t0:6.1f}s] {m}")  # noqa: E731
    p = get_preset(preset)
    s = p.shape()
    n_dec = p.window + (decode_memory // s.config.num_latents) * s.config.segment_len
    lengths = sorted(set(lengths) | {n_dec})
    dev = torch.device(device)
    with torch.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        model = build_model(p, device, dtype)
    _randomize_norms(model)
    backends = _available(dev) if backends is None else tuple(backends)
    tick(f"built {preset} ({sum(t.numel() for t in model.parameters()) / 1e9:.2f}B params)")
    result: dict = {"preset": preset, "rows": [], "skipped": [], "errors": [], "decode": None,
                    "meta": None, "plot": None}
    extra = dict(sweep_options or {})
    policy = SweepOptions(lengths=[1], **extra).timing_policy()

    def sweep(n: int, **over):
        opts = dict(dict(lengths=[n], device=device, dtype=dtype, decode_tokens=decode_tokens,
                         train=train, reference=reference), **extra)
        opts.update(over)
        with _reuse_model(model):
            res = run_sweep(p, SweepOptions(**opts), progress=tick)
        if not over:                                # the measured pass: every other backend too
            _time_backends(model, p, res["rows"][0], SweepOptions(**opts), backends)
        return res

    gen = torch.Generator().manual_seed(0)
    n_chk = p.window + 2 * s.config.segment_len
    ids = torch.randint(0, p.llm.vocab_size, (1, n_chk), generator=gen).to(dev)
    mem_chk = memory_oracle(model, ids[:, : n_chk - p.window], backends)
    log_chk = logits_oracle(model, ids[:, : n_chk - p.window], ids[:, n_chk - p.window:], backends)
    result["correct"] = {"memory": mem_chk, "logits": log_chk,
                         "ok": bool(mem_chk["ok"] and log_chk["ok"])}
    tick(f"correctness {'OK' if result['correct']['ok'] else 'RED'}: memory "
         + " ".join(f"{b} {mem_chk[b]['err']:.2e}" for b in backends)
         + f" eager {mem_chk['eager_err']:.2e}; logits vs torch "
         + " ".join(f"{b} {d:.2e}" for b, d in log_chk["vs_torch"].items())
         + f" torch-eager {log_chk['torch_vs_eager']:.2e}")
    if not result["correct"]["ok"]:
        return result
    if warm_up:
        tw = time.perf_counter()
        try:
            sweep(lengths[0], repeats=1, max_repeats=1, warmup_s=0.0, target_s=0.0,
                  memory=False, gemm=False)
            tick(f"warm-up pass at {lengths[0]} tokens: {time.perf_counter() - tw:.1f}s "
                 f"(not counted)")
        except Exception as exc:  # the measured pass below reports it
            tick(f"warm-up pass at {lengths[0]} tokens: {type(exc).__name__}: {exc}")
    todo, prev = [lengths[0]], None
    while todo:
        n = todo.pop(0)
        secs, peak = _estimate(prev, n, p.llm, s, decode_tokens, policy)
        left = None if deadline is None else deadline - time.perf_counter()
        if left is not None and secs > left:
            result["skipped"].append({"tokens": n, "reason": "time budget",
                                      "estimate_s": round(secs, 1), "left_s": round(left, 1)})
            tick(f"{n} tokens skipped: estimated {secs:.0f}s > {left:.0f}s left")
            continue
        if peak is not None and dev.type == "cuda" and peak > 0.9 * torch.cuda.mem_get_info()[0]:
            result["skipped"].append({"tokens": n, "reason": "memory", "estimate_bytes": peak})
            continue
        tw = time.perf_counter()
        try:
            res = sweep(n)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            longer = [m for m in [n] + todo if m >= n]
            result["skipped"].extend({"tokens": m, "reason": "OOM"} for m in longer)
            todo = [m for m in todo if m < n]
            tick(f"{n} tokens: out of memory; lengths >= {n} skipped")
            continue
        except Exception as exc:  # keep the lengths already measured
            result["errors"].append({"tokens": n, "error": f"{type(exc).__name__}: {exc}"})
            tick(f"{n} tokens: {type(exc).__name__}: {exc}; sweep stopped")
            break
        row = res["rows"][0]
        row["wall_s"] = time.perf_counter() - tw
        result["rows"].append(row)
        result["meta"] = res["meta"]
        if prev is None:   # first (shortest) length measured: admit the rest by estimate
            budget = math.inf if deadline is None else deadline - time.perf_counter()
            todo, left_out = plan_lengths(row, lengths, [lengths[-1], n_dec], budget, p.llm, s,
                                          decode_tokens, policy)
            result["skipped"].extend({"tokens": m, "reason": "time budget (plan)",
                                      "estimate_s": round(_estimate(row, m, p.llm, s,
                                                                    decode_tokens, policy)[0], 1)}
                                     for m in left_out)
            if left_out:
                tick(f"planned {todo}; left out {left_out} (time budget)")
        prev = row
    dec = next((r for r in result["rows"] if r["tokens"] == n_dec), None)
    if dec is not None and "decode_cached_tok_s" in dec:
        result["decode"] = {
            "memory": dec["memory"], "tokens": n_dec,
            "cached_tok_s": dec["decode_cached_tok_s"],
            "recompute_tok_s": dec["decode_recompute_tok_s"],
            "ratio": dec["decode_cached_tok_s"] / dec["decode_recompute_tok_s"],
            "kv_projection_ms": _kv_projection_ms(model, dec["memory"], dev)}
    result["crossover_flops"] = {c: fl.crossover(p.llm, s, c) for c in fl.CAUSAL_CONVENTIONS}
    result["seconds"] = time.perf_counter() - t0
    model = None    # frees the weights before the next preset
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    if out_dir is not None and result["rows"]:
        out = Path(out_dir)
        name = torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"
        png = out / "e2e.png"
        result["plot"] = written(png, plot(png, result["rows"], f"{preset} on {name}"))
        write_json(out / "e2e.json", result)
        tick(f"plot: {result['plot']}")
    if result["rows"]:
        progress(measured_table(result["rows"]))
    return result


# ---------------------------------------------------------------------------- compression
class EmbeddingOnlyLM(nn.Module):
    """Just enough of a Llama-style causal LM for `LCIRCForCausalLM.compress`: a token
    embedding table [vocab, d] and one placeholder decoder layer (for the one GCA hook), in
    the Llama layout, so it declares model_type "llama" to the base adapters."""

    def __init__(self, vocab: int, dim: int, heads: int, head_dim: int, ffn: int,
                 device=None, dtype=None):
        super().__init__()
        self.config = SimpleNamespace(hidden_size=dim, num_hidden_layers=1,
                                      num_attention_heads=heads, head_dim=head_dim,
                                      intermediate_size=ffn, vocab_size=vocab,
                                      model_type="llama")
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(vocab, dim, device=device, dtype=dtype)
        self.model.layers = nn.ModuleList([nn.Identity()])
        self.lm_head = nn.Identity()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def forward(self, input_ids=None, cache=None, **kwargs):
        raise NotImplementedError("EmbeddingOnlyLM serves compression only; it has no LM forward")


PAPER_COMPRESSOR = dict(vocab=32000, dim=4096, heads=32, head_dim=128, ffn=11008, latents=64,
                        layers=4, segment_len=2048, max_segment_len=4096)
TINY_COMPRESSOR = dict(vocab=256, dim=64, heads=4, head_dim=16, ffn=128, latents=4, layers=2,
                       segment_len=16, max_segment_len=32)


def build_compressor_model(device, dtype, shapes: dict = PAPER_COMPRESSOR, seed: int = 0):
    """LCIRCForCausalLM over `EmbeddingOnlyLM`: the compressor, latents, position table and
    embeddings at `shapes`, random weights (normalisation affines randomised)."""
    from lcirc_fast import LCIRCConfig, LCIRCForCausalLM

    dev = torch.device(device)
    torch.manual_seed(seed)
    with torch.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        base = EmbeddingOnlyLM(shapes["vocab"], shapes["dim"], shapes["heads"],
                               shapes["head_dim"], shapes["ffn"], device=dev, dtype=dtype)
        cfg = LCIRCConfig(num_latents=shapes["latents"], compressor_layers=shapes["layers"],
                          segment_len=shapes["segment_len"],
                          max_segment_len=shapes["max_segment_len"], gca_layers=[0])
        model = LCIRCForCausalLM.from_base(base, cfg).eval()
    _randomize_norms(model)
    return model


def run_compress(device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
                 shapes: dict = PAPER_COMPRESSOR, doc_tokens: int = 131072,
                 check_tokens: int = 16384, backends=None, repeats: int = 3,
                 peak_tflops: float = 790.0, deadline: float | None = None,
                 emulate_graphs: bool = False, hoists=("default", "16seg"),
                 progress: Callable[[str], None] = print) -> dict:
    """Time `model.compress` on one `doc_tokens` document per (backend, hoist, cuda_graphs);
    `backends`: default every available one on `device` (torch, triton, cuda when built).

    `hoists`: "default" (the model's K/V hoisting limits) and/or "16seg" (16 segments per
    product, no byte budget). `emulate_graphs` (CPU): the graph variants run through
    `cuda_graph.EagerCapture`, which exercises the cache's bookkeeping but measures nothing
    about CUDA graphs.
    Returns {"correct", "rows", "skipped", "errors", "flops", "best"}; no rows unless the
    memory check is ok; a graph row carries `graph_check_ok` (bitwise or <= 1e-3 relative to
    the eager memory, with replays counted).
    """
    from lcirc_fast import flops as fl
    from lcirc_fast.flops import LCIRCShape
    from lcirc_fast.models import cuda_graph

    t0 = time.perf_counter()
    tick = lambda m: progress(f"[compress {time.perf_counter() - t0:6.1f}s] {m}")  # noqa: E731
    dev = torch.device(device)
    model = build_compressor_model(dev, dtype, shapes)
    backends = _available(dev) if backends is None else tuple(backends)
    shape = LCIRCShape(model.config)
    flops = fl.compress(shape, doc_tokens).flops
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shapes["vocab"], (1, doc_tokens), generator=gen).to(dev)
    result: dict = {"doc_tokens": doc_tokens, "flops": flops, "rows": [], "skipped": [],
                    "errors": [],
                    "graphs": "emulated (CPU: EagerCapture)" if emulate_graphs else "cuda",
                    "shapes": dict(shapes), "dtype": str(dtype)}
    chk = memory_oracle(model, ids[:, :min(check_tokens, doc_tokens)], backends)
    result["correct"] = {"memory": chk, "ok": bool(chk["ok"])}
    tick(f"correctness {'OK' if chk['ok'] else 'RED'}: "
         + " ".join(f"{b} {chk[b]['err']:.2e}" for b in backends)
         + f" eager {chk['eager_err']:.2e}")
    if not chk["ok"]:
        return result
    known = {"default": (model.config.kv_hoist_max_segments, model.config.kv_hoist_budget_bytes),
             "16seg": (16, 1 << 40)}
    bad = [h for h in hoists if h not in known]
    if bad:
        raise ValueError(f"unknown hoist setting(s) {bad}; known: {sorted(known)}")
    hoists = {h: known[h] for h in hoists}
    last_s = None
    graph_ok = True
    for be in backends:
        model.configure(backend=be)
        for hname, (most, budget) in hoists.items():
            model.configure(kv_hoist_max_segments=most, kv_hoist_budget_bytes=budget)
            plain = None
            for graphs in (False, True):
                if deadline is not None and last_s is not None \
                        and time.perf_counter() + (repeats + 2) * last_s > deadline:
                    result["skipped"].append({"backend": be, "hoist": hname, "cuda_graphs": graphs,
                                              "reason": "time budget"})
                    continue
                cuda_graph.clear(model)
                if graphs and emulate_graphs:
                    cuda_graph.graph_cache(model, capturer=cuda_graph.EagerCapture())
                model.configure(cuda_graphs=graphs)
                try:
                    with torch.no_grad():
                        secs, mem = _median_time(functools.partial(model.compress, ids), dev, repeats)
                except Exception as exc:  # e.g. a capture that fails: keep the other variants
                    result["errors"].append({"backend": be, "hoist": hname, "cuda_graphs": graphs,
                                             "error": f"{type(exc).__name__}: {exc}"})
                    tick(f"{be} hoist {hname} graphs {graphs}: {type(exc).__name__}: {exc}")
                    graph_ok &= not graphs
                    model.configure(cuda_graphs=False)
                    cuda_graph.clear(model)
                    continue
                hidden = mem.hidden
                last_s = secs
                st = cuda_graph.stats(model)
                tf = flops / secs / 1e12
                row = {"backend": be, "hoist": hname, "cuda_graphs": graphs, "ms": secs * 1e3,
                       "tflops": tf, "frac_peak": tf / peak_tflops,
                       "goal_met": tf / peak_tflops >= 0.5,
                       "replays": st["replay"], "captures": st["capture"],
                       "bypasses": {k: v for k, v in st.items() if k.startswith("bypass")}}
                if graphs and plain is not None:
                    same = torch.equal(hidden, plain[0])
                    err = _rel(hidden, plain[0])
                    row.update(bitwise_equal_to_eager=same, rel_err_vs_eager=err,
                               speedup_vs_eager=plain[1] / secs)
                    ok = (same or err <= 1e-3) and st["replay"] > 0
                    row["graph_check_ok"] = ok
                    graph_ok &= ok
                elif not graphs:
                    plain = (hidden, secs)
                result["rows"].append(row)
                tick(f"{be:6s} hoist {hname:7s} graphs {'on ' if graphs else 'off'}: "
                     f"{secs * 1e3:8.2f} ms {tf:7.1f} TFLOP/s ({100 * tf / peak_tflops:.1f}% of "
                     f"{peak_tflops:.0f})" + (f" bitwise={row['bitwise_equal_to_eager']}"
                                               if "bitwise_equal_to_eager" in row else ""))
    model.configure(cuda_graphs=False)
    cuda_graph.clear(model)
    result["correct"]["cuda_graphs"] = graph_ok
    result["correct"]["ok"] = bool(chk["ok"] and graph_ok)
    valid = [r for r in result["rows"] if not r["cuda_graphs"] or r.get("graph_check_ok")]
    if valid:
        best = max(valid, key=lambda r: r["tflops"])
        result["best"] = {k: best[k] for k in ("backend", "hoist", "cuda_graphs", "ms", "tflops",
                                               "frac_peak", "goal_met")}
    result["seconds"] = time.perf_counter() - t0
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return result
