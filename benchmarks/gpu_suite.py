"""One-file GPU check for the LCIRC kernels of every backend (meant for an H200; about 7 min).

Sections run in order; each appends rows to the JSON written to --out:
  env          versions and device; one "backend" row per registered backend (available here or
               why not, and which backend serves each of its ops)
  correctness  bf16 error-ratio oracle at real shapes (fwd + grads) and deterministic=True bitwise
               repeatability (incl. a batch-60 race check); speed-ups are only reported when green
  perceiver    64 latents x 2048/4096 keys, 32 heads x 128, batch 1 and 8: fwd and fwd+bwd
  gca          4096 queries x 512/1024/3200 memory vectors (+ gated residual epilogue)
  epilogue     bf16 check of every backend's gated residual (fwd + grads) against fp32, then
               gated residual and LayerNorm(+position add) bandwidth per backend
  compress128k one 128K-token document through the paper's compressor (4 layers, K=64, 2K
               segments, d 4096, 32x128 heads, FFN 11008, bf16, random weights, embedding table
               only): TFLOP/s over the analytic FLOPs and the fraction of PEAK_TFLOPS, every
               available backend, default vs 16-segment K/V hoist, CUDA graphs off vs on
               (bitwise comparison of the memories)
  e2e          Llama-2-7B-shaped LCIRC (random weights): prefill LCIRC vs full attention (SDPA)
               from 4K to 128K tokens (lengths that would not fit the time or memory left are
               skipped and listed), decode tokens/s with cached vs re-projected memory K/V at
               3200 memory vectors, LCIRC prefill on every available backend; writes e2e.json /
               e2e.png next to --out
Providers: every available backend of the ops registry (torch: SDPA + eager epilogues; triton:
the fused kernels; cuda: the compiled extension, when built) and naive (fp32 reference). A
backend whose ops in a case are all served by a backend already timed (cuda's cross-attention is
Triton's) gets a "same_kernels" row instead of a second timing. Other sections plug in with
`register_section(name, fn, budget_s)`, where fn(ctx: Suite) appends rows with `ctx.record(...)`.

Time: the run stops starting sections once --budget-s (default 420 s; scripts/gpu_check.sh passes
its BUDGET_S) is spent; a section with a budget gets at most that much (`Suite.section_deadline`,
never past the run's budget) and sizes its work to it (`--dry-run` lists the budgets).
Correctness has none: it runs first and whole. A section that
raises is recorded as an error row (and turns the run red) and the next one runs; the JSON is
rewritten after every section. Measurements of the compress128k and e2e sections are recorded
only when their correctness checks pass.

Usage:
  python benchmarks/gpu_suite.py --out results.json            # all sections, CUDA
  python benchmarks/gpu_suite.py --section perceiver --section gca
  python benchmarks/gpu_suite.py --cpu-smoke --out /tmp/s.json  # tiny shapes, Triton interpreter
  python benchmarks/gpu_suite.py --dry-run                      # list sections and cases only
  scripts/gpu_check.sh                                          # the one command for a lent H200
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
for _p in (_ROOT, _HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

PEAK_TFLOPS = 790.0  # measured bf16 dense matmul ceiling on the H200
PEAK_TBPS = 4.3  # measured device-to-device copy bandwidth

SECTIONS: dict[str, Callable] = {}
SECTION_BUDGET_S: dict[str, float] = {}
DEFAULT_BUDGET_S = 420.0
MIN_SECTION_S = 10.0  # a section is not started with less time than this left


def register_section(name: str, fn: Callable, budget_s: float | None = None) -> None:
    """Add (or replace) a section; ``fn(suite)`` runs it and records rows with ``suite.record``.

    budget_s: the most seconds the section may take (it reads ``suite.section_deadline``)."""
    SECTIONS[name] = fn
    if budget_s is None:
        SECTION_BUDGET_S.pop(name, None)
    else:
        SECTION_BUDGET_S[name] = float(budget_s)


@dataclass
class Suite:
    """Run context handed to every section."""
    args: argparse.Namespace
    device: str
    smoke: bool
    rows: list = field(default_factory=list)
    green: bool = True
    deadline: float = math.inf  # time.perf_counter() value after which no section starts
    section_deadline: float = math.inf  # the current section's own limit

    def time_left(self) -> float:
        return self.section_deadline - time.perf_counter()

    def record(self, **row) -> dict:
        row.setdefault("section", self.current)
        self.rows.append(row)
        return row

    current: str = ""

    # ---- shapes ---------------------------------------------------------------------------
    def heads_dim(self):
        return (1, 16) if self.smoke else (32, 128)

    # ---- timing ---------------------------------------------------------------------------
    def bench(self, fn: Callable) -> tuple[float, float, float]:
        """(p50, p20, p80) milliseconds."""
        if self.smoke:
            fn()
            t = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t) * 1e3
            return ms, ms, ms
        import triton
        fn()
        import torch
        torch.cuda.synchronize()
        return tuple(triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8]))

    def peak_mem(self, fn: Callable) -> float | None:
        """Peak extra device memory (MiB) of one call."""
        if self.device != "cuda":
            return None
        import torch
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


# ---------------------------------------------------------------------------------------------
def _backends(s: Suite) -> dict:
    """backend -> OpSet of every backend that runs on the suite's device (registry order)."""
    from lcirc_fast.ops.registry import available_backends, bind
    return {b: bind(b) for b in available_backends(s.device)}


def _distinct(s: Suite, label: str, ops_used: tuple[str, ...]) -> dict:
    """The backends of `_backends` whose kernels for `ops_used` differ from every earlier one's;
    each other backend is recorded as a "same_kernels" row naming the backend it duplicates."""
    seen, out = {}, {}
    for name, ops in _backends(s).items():
        key = tuple(ops.provider[op] for op in ops_used)
        if key in seen:
            s.record(kind="same_kernels", case=label, backend=name, same_as=seen[key], ops=list(ops_used))
            continue
        seen[key] = name
        out[name] = ops
    return out


def _ops():
    """(registry.bind, triton cross_attention, naive references of the three ops)."""
    from lcirc_fast.ops.cross_attn import cross_attention, naive_cross_attention
    from lcirc_fast.ops.layernorm import naive_layer_norm
    from lcirc_fast.ops.registry import bind
    from lcirc_fast.ops.tanh_gate import naive_gated_residual
    return bind, cross_attention, naive_cross_attention, naive_gated_residual, naive_layer_norm


def _rand(shape, dtype, device, requires_grad=False):
    import torch
    return torch.randn(shape, dtype=dtype, device=device).requires_grad_(requires_grad)


def section_env(s: Suite) -> None:
    import torch
    import triton
    row = dict(kind="env", python=platform.python_version(), torch=torch.__version__,
               triton=triton.__version__, device=s.device,
               interpret=os.environ.get("TRITON_INTERPRET", ""))
    if s.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        row.update(gpu=p.name, sms=p.multi_processor_count, mem_gib=round(p.total_memory / 2**30, 1))
    s.record(**row)
    print("env:", row)
    from lcirc_fast.ops.registry import RECORDS, bind
    for name, rec in RECORDS.items():
        why = rec.unavailable() or rec.wrong_device(torch.device(s.device))
        brow = dict(kind="backend", backend=name, available=why is None, reason=why)
        if why is None:
            brow["provider"] = dict(bind(name).provider)
        s.record(**brow)
        print(f"backend {name}: " + (f"available, ops from {brow['provider']}" if why is None
                                     else f"not available: {why}"))


def _attn_case_error(s: Suite, B, Lq, Lk, deterministic=False):
    """bf16 kernel vs fp32 naive, compared with bf16 SDPA vs fp32 naive (3x for grads)."""
    import torch
    bind, xattn, naive, _, _ = _ops()
    sdpa = bind("torch").cross_attention
    H, D = s.heads_dim()
    dt = torch.bfloat16
    q, k, v = (_rand((B, L, H, D), dt, s.device) for L in (Lq, Lk, Lk))
    do = _rand((B, Lq, H, D), dt, s.device)
    res = {}
    for name, fn, cast in (("triton", lambda a, b, c: xattn(a, b, c, deterministic=deterministic), dt),
                           ("sdpa", sdpa, dt),
                           ("ref", naive, torch.float32)):
        ins = [t.detach().to(cast).requires_grad_(True) for t in (q, k, v)]
        o = fn(*ins)
        g = torch.autograd.grad(o, ins, do.to(cast))
        res[name] = [o.float()] + [x.float() for x in g]
    out = {}
    ok = True
    for i, nm in enumerate(("o", "dq", "dk", "dv")):
        err = (res["triton"][i] - res["ref"][i]).abs().max().item()
        terr = (res["sdpa"][i] - res["ref"][i]).abs().max().item()
        bound = (2.0 if nm == "o" else 3.0) * terr + 5e-2
        out[nm] = dict(err=err, torch_err=terr, ok=bool(err <= bound and math.isfinite(err)))
        ok &= out[nm]["ok"]
    return ok, out


def section_correctness(s: Suite) -> None:
    import torch
    _, xattn, _, _, _ = _ops()
    cases = [(1, 8, 100), (1, 40, 70)] if s.smoke else [(1, 64, 4096), (2, 64, 2048), (1, 4096, 3200), (1, 1, 3968)]
    for B, Lq, Lk in cases:
        ok, errs = _attn_case_error(s, B, Lq, Lk)
        s.green &= ok
        s.record(kind="oracle", op="cross_attention", dtype="bf16", B=B, Lq=Lq, Lk=Lk, ok=ok, errors=errs)
        print(f"oracle bf16 B{B} {Lq}x{Lk}: {'OK' if ok else 'RED'} "
              + " ".join(f"{k}={v['err']:.2e}/{v['torch_err']:.2e}" for k, v in errs.items()))
    H, D = s.heads_dim()
    det_cases = [(1, 8, 100), (3, 8, 64)] if s.smoke else [(1, 64, 4096), (60, 64, 512), (1, 1024, 1024)]
    for B, Lq, Lk in det_cases:
        q, k, v = (_rand((B, L, H, D), torch.bfloat16, s.device) for L in (Lq, Lk, Lk))
        do = _rand((B, Lq, H, D), torch.bfloat16, s.device)
        grads = []
        for _ in range(3):
            ins = [t.detach().requires_grad_(True) for t in (q, k, v)]
            grads.append(torch.autograd.grad(xattn(*ins, deterministic=True), ins, do))
        same = all(torch.equal(a, b) for g in grads[1:] for a, b in zip(grads[0], g))
        s.green &= same
        s.record(kind="determinism", op="cross_attention", B=B, Lq=Lq, Lk=Lk, ok=same)
        print(f"deterministic=True B{B} {Lq}x{Lk}: {'bitwise equal' if same else 'RED: differs'}")


def _gated_residual_oracle(s: Suite) -> None:
    """bf16 gated residual (output and grads) of every backend with its own kernel vs the fp32
    reference, against the torch backend's error (2x + 1e-2)."""
    import torch
    _, _, _, naive_gate, _ = _ops()
    shape = (2, 8, 64) if s.smoke else (4, 2048, 4096)
    x, y, dy = (_rand(shape, torch.bfloat16, s.device) for _ in range(3))
    g = torch.tensor([0.4], device=s.device)

    def run(fn, cast):
        ins = [x.to(cast).requires_grad_(True), y.to(cast).requires_grad_(True), g.clone().requires_grad_(True)]
        out = fn(*ins)
        return [out.float()] + [t.float() for t in torch.autograd.grad(out, ins, dy.to(cast))]

    ref = run(naive_gate, torch.float32)
    errs = {name: [(a - b).abs().max().item() for a, b in zip(run(ops.gated_residual, torch.bfloat16), ref)]
            for name, ops in _distinct(s, "gated_residual oracle", ("gated_residual",)).items()}
    for name, err in errs.items():
        ok = all(math.isfinite(e) and e <= 2 * t + 1e-2 for e, t in zip(err, errs["torch"]))
        s.green &= ok
        s.record(kind="oracle", op="gated_residual", backend=name, dtype="bf16", ok=ok,
                 errors=dict(zip(("out", "dx", "dbranch", "dgate"), err)))
        print(f"oracle gated_residual {name} bf16: {'OK' if ok else 'RED'} "
              + " ".join(f"{e:.2e}" for e in err))


def _attn_providers(s: Suite, label: str, with_epilogue: bool):
    """provider -> fn(q, k, v[, x]): every available backend with kernels of its own for the
    case's ops (`_distinct`), then "naive" (fp32 reference)."""
    import torch
    _, _, naive, naive_gate, _ = _ops()
    used = ("cross_attention", "gated_residual") if with_epilogue else ("cross_attention",)
    gate = torch.tensor(0.5, device=s.device)
    provs = {}
    for name, ops in _distinct(s, label, used).items():
        if with_epilogue:
            provs[name] = (lambda ops: lambda q, k, v, x: ops.gated_residual(
                x, ops.cross_attention(q, k, v).flatten(-2), gate))(ops)
        else:
            provs[name] = (lambda ops: lambda q, k, v: ops.cross_attention(q, k, v))(ops)
    if with_epilogue:
        provs["naive"] = lambda q, k, v, x: naive_gate(x, naive(q, k, v).flatten(-2), gate)
    else:
        provs["naive"] = lambda q, k, v: naive(q, k, v)
    return provs


def _bench_attention(s: Suite, label: str, B: int, Lq: int, Lk: int, epilogue: bool) -> None:
    import torch
    H, D = s.heads_dim()
    dt = torch.bfloat16
    flops_fwd = 4.0 * B * H * Lq * Lk * D
    elem = 2
    bytes_fwd = elem * B * H * D * (2 * Lq + 2 * Lk)
    bytes_bwd = elem * B * H * D * (4 * Lq + 4 * Lk) + bytes_fwd
    times = {}
    for prov, fn in _attn_providers(s, label, epilogue).items():
        q, k, v = (_rand((B, L, H, D), dt, s.device, True) for L in (Lq, Lk, Lk))
        x = _rand((B, Lq, H * D), dt, s.device) if epilogue else None
        args = (q, k, v, x) if epilogue else (q, k, v)
        do = _rand((B, Lq, H * D) if epilogue else (B, Lq, H, D), dt, s.device)
        for mode in ("fwd", "fwd+bwd"):
            if mode == "fwd":
                def run():
                    with torch.no_grad():
                        return fn(*args)
            else:
                def run():
                    o = fn(*args)
                    torch.autograd.grad(o, (q, k, v), do)
            try:
                p50, p20, p80 = s.bench(run)
                mem = s.peak_mem(run)
            except torch.OutOfMemoryError:
                s.record(kind="bench", case=label, provider=prov, mode=mode, error="OOM")
                continue
            fl = flops_fwd * (1.0 if mode == "fwd" else 3.5)
            by = bytes_fwd if mode == "fwd" else bytes_bwd
            tf = fl / (p50 * 1e-3) / 1e12
            gbs = by / (p50 * 1e-3) / 1e9
            times[(prov, mode)] = p50
            s.record(kind="bench", case=label, provider=prov, mode=mode, B=B, Lq=Lq, Lk=Lk, H=H, D=D,
                     epilogue=epilogue, ms_p50=p50, ms_p20=p20, ms_p80=p80, tflops=tf, gbps=gbs,
                     frac_peak_flops=tf / PEAK_TFLOPS, frac_peak_bw=gbs / 1e3 / PEAK_TBPS, peak_mib=mem)
    for (prov, mode), t in times.items():
        if prov in ("torch", "naive"):
            continue
        for base in ("torch", "naive"):
            if (base, mode) in times:
                s.record(kind="speedup", case=label, provider=prov, mode=mode, vs=base,
                         ratio=(times[(base, mode)] / t) if s.green else None,
                         gated_by_correctness=not s.green)


def _out_of_time(s: Suite, label: str) -> bool:
    """True (and the case recorded as skipped) once the section's own time is spent."""
    if s.time_left() > 0:
        return False
    s.record(kind="skipped", what="case", case=label, reason="section budget")
    print(f"{label}: skipped (section budget spent)", flush=True)
    return True


def section_perceiver(s: Suite) -> None:
    cases = [(1, 8, 60)] if s.smoke else [(b, 64, lk) for b in (1, 8) for lk in (2048, 4096)]
    for B, Lq, Lk in cases:
        label = f"perceiver_b{B}_{Lq}x{Lk}"
        if not _out_of_time(s, label):
            _bench_attention(s, label, B, Lq, Lk, epilogue=False)


def section_gca(s: Suite) -> None:
    cases = [(1, 40, 70)] if s.smoke else [(1, 4096, m) for m in (512, 1024, 3200)] + [(1, 1, 3200)]
    for B, Lq, Lk in cases:
        label = f"gca_b{B}_{Lq}x{Lk}"
        if not _out_of_time(s, label):
            _bench_attention(s, label, B, Lq, Lk, epilogue=Lq > 1)


def section_epilogue(s: Suite) -> None:
    import torch
    _gated_residual_oracle(s)           # gates the speed-ups like the correctness section
    dt = torch.bfloat16
    N, d, L = (2, 64, 8) if s.smoke else (8, 4096, 2048)
    x = _rand((N, L, d), dt, s.device, True)
    y = _rand((N, L, d), dt, s.device, True)
    g = torch.tensor(0.3, device=s.device, requires_grad=True)
    pos = _rand((L, d), dt, s.device, True)
    w = _rand((d,), torch.float32, s.device, True)
    b = _rand((d,), torch.float32, s.device, True)
    w16, b16 = w.detach().to(dt).requires_grad_(True), b.detach().to(dt).requires_grad_(True)
    nbytes = x.numel() * 2
    cases = {}
    for name, ops in _distinct(s, "gated_residual", ("gated_residual",)).items():
        cases[("gated_residual", name)] = ((lambda ops: lambda: ops.gated_residual(x, y, g))(ops), 3, (x, y, g))
    for name, ops in _distinct(s, "layer_norm+pos", ("layer_norm",)).items():
        cases[("layer_norm+pos", name)] = ((lambda ops: lambda: ops.layer_norm(x, w16, b16, 1e-5, pos))(ops),
                                           2, (x, w16, b16, pos))
    for (op, prov), (fn, passes, ins) in cases.items():
        if _out_of_time(s, f"{op}/{prov}"):
            continue
        dout = torch.randn_like(x)
        p50, _, _ = s.bench(lambda: fn().detach())
        pb, _, _ = s.bench(lambda: torch.autograd.grad(fn(), ins, dout))
        s.record(kind="bench", case=op, provider=prov, mode="fwd", ms_p50=p50,
                 gbps=passes * nbytes / (p50 * 1e-3) / 1e9)
        s.record(kind="bench", case=op, provider=prov, mode="fwd+bwd", ms_p50=pb)


def _out_dir(s: Suite) -> str:
    return os.path.dirname(os.path.abspath(s.args.out))


def section_compress128k(s: Suite) -> None:
    """128K-token compression with the paper's compressor; tiny shapes in the smoke mode."""
    import torch
    from e2e_section import PAPER_COMPRESSOR, TINY_COMPRESSOR, run_compress

    if s.smoke:
        kw = dict(device="cpu", dtype=torch.float32, shapes=TINY_COMPRESSOR, doc_tokens=32,
                  check_tokens=32, repeats=1, emulate_graphs=True, hoists=("default",))
    else:
        kw = dict(device="cuda", dtype=torch.bfloat16, shapes=PAPER_COMPRESSOR,
                  doc_tokens=131072, check_tokens=16384, repeats=5)
    res = run_compress(peak_tflops=PEAK_TFLOPS, deadline=s.section_deadline,
                       progress=lambda m: print(m, flush=True), **kw)
    chk = res["correct"]
    s.record(kind="compress_check", ok=chk["ok"], memory=chk["memory"],
             cuda_graphs=chk.get("cuda_graphs"), doc_tokens=res["doc_tokens"])
    green_before = s.green
    s.green &= bool(chk["ok"])
    if not (green_before and chk["memory"]["ok"]):
        print("compress128k: correctness RED, measurements withheld")
        return
    for r in res["rows"]:
        if r["cuda_graphs"] and not r.get("graph_check_ok", False):
            continue  # graph replay disagreed with the eager step: its time is not reported
        s.record(kind="compress", doc_tokens=res["doc_tokens"], flops=res["flops"],
                 graphs_mode=res["graphs"], **r)
    for r in res["skipped"]:
        s.record(kind="skipped", what="compress variant", **r)
    for r in res["errors"]:
        s.green = False
        s.record(kind="error", **r)
    if res.get("best"):
        s.record(kind="compress_best", **res["best"])


def section_e2e(s: Suite) -> None:
    """LCIRC vs full attention end to end; the tiny preset on the CPU in the smoke mode."""
    import torch
    from e2e_section import run_e2e

    if s.smoke:
        # no forked memory probe (the CPU's way; CUDA reads the allocator's peak instead); one
        # warm-up and one timed run per workload: the interpreter is slow, the smoke run checks
        # the plumbing of every backend, not its speed
        kw = dict(lengths=(32, 64, 128), preset="tiny", device="cpu", dtype=torch.float32,
                  decode_tokens=2, decode_memory=8,
                  sweep_options=dict(memory=False, repeats=1, max_repeats=1, warmup_s=0.0))
    else:
        kw = dict(preset="llama2-7b", device="cuda", dtype=torch.bfloat16, decode_tokens=16,
                  decode_memory=3200)
    res = run_e2e(_out_dir(s) if s.green else None, deadline=s.section_deadline,
                  progress=lambda m: print(m, flush=True), **kw)
    chk = res["correct"]
    s.record(kind="e2e_check", ok=chk["ok"], memory=chk["memory"], logits=chk["logits"])
    s.green &= bool(chk["ok"])
    if not s.green:
        print("e2e: correctness RED, measurements withheld")
        return
    for r in res["rows"]:
        s.record(kind="e2e", **r)
    for r in res["skipped"]:
        s.record(kind="skipped", what="e2e length", **r)
    for r in res["errors"]:
        s.green = False
        s.record(kind="error", **r)
    if res["decode"] is not None:
        s.record(kind="e2e_decode", **res["decode"])
    s.record(kind="e2e_meta", meta=res["meta"], crossover_flops=res.get("crossover_flops"),
             plot=res.get("plot"))


# Correctness first (it gates every speed-up and is never cut short); the measuring sections
# stop starting cases (perceiver, gca, epilogue) or lengths and variants (compress128k, e2e)
# once their own budget or the run's --budget-s is spent.
for _name, _fn, _budget in (("env", section_env, None), ("correctness", section_correctness, None),
                            ("perceiver", section_perceiver, 45.0),
                            ("gca", section_gca, 45.0),
                            ("epilogue", section_epilogue, 20.0),
                            ("compress128k", section_compress128k, 90.0),
                            ("e2e", section_e2e, 240.0)):
    register_section(_name, _fn, _budget)


def _table(rows: list) -> str:
    lines = [f"{'case':28s} {'provider':8s} {'mode':8s} {'ms':>9s} {'TFLOP/s':>8s} {'GB/s':>8s} "
             f"{'%peak':>6s} {'MiB':>8s}"]
    for r in rows:
        if r.get("kind") != "bench" or "ms_p50" not in r:
            continue
        pk = max(r.get("frac_peak_flops") or 0, r.get("frac_peak_bw") or 0)
        lines.append(f"{r['case']:28s} {r['provider']:8s} {r['mode']:8s} {r['ms_p50']:9.3f} "
                     f"{(r.get('tflops') or 0):8.1f} {(r.get('gbps') or 0):8.0f} {100 * pk:6.1f} "
                     f"{(r.get('peak_mib') or 0):8.0f}")
    for r in rows:
        if r.get("kind") == "speedup":
            ratio = "gated (correctness red)" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            lines.append(f"speedup {r['case']} {r['provider']} {r['mode']} vs {r['vs']}: {ratio}")
        elif r.get("kind") == "same_kernels":
            lines.append(f"{r['case']}: {r['backend']} runs {r['same_as']}'s kernels for {r['ops']} "
                         f"(timed once, as {r['same_as']})")
        elif r.get("kind") == "backend" and not r["available"]:
            lines.append(f"backend {r['backend']} not timed: {r['reason']}")
    comp = [r for r in rows if r.get("kind") == "compress"]
    if comp:
        lines.append(f"compress {comp[0]['doc_tokens']} tokens ({comp[0]['flops'] / 1e12:.1f} "
                     f"TFLOP analytic; graphs {comp[0]['graphs_mode']}):")
        lines.append(f"  {'backend':7s} {'hoist':7s} {'graphs':6s} {'ms':>9s} {'TFLOP/s':>8s} "
                     f"{'%peak':>6s} {'goal':>4s} {'vs eager':>8s}")
        for r in comp:
            sp = r.get("speedup_vs_eager")
            lines.append(f"  {r['backend']:7s} {r['hoist']:7s} {'on' if r['cuda_graphs'] else 'off':6s} "
                         f"{r['ms']:9.2f} {r['tflops']:8.1f} {100 * r['frac_peak']:6.1f} "
                         f"{'yes' if r['goal_met'] else 'no':>4s} "
                         f"{'' if sp is None else f'{sp:.2f}x':>8s}")
    e2e = [r for r in rows if r.get("kind") == "e2e"]
    if e2e:
        lines.append(f"e2e {'tokens':>7s} {'memory':>6s} {'full':>9s} {'LCIRC':>9s} {'speedup':>8s} "
                     f"{'FLOPs %':>7s} {'dec cached':>10s} {'dec recomp':>10s}")
        for r in e2e:
            dc, dr = r.get("decode_cached_tok_s"), r.get("decode_recompute_tok_s")
            lines.append(f"    {r['tokens']:7d} {r['memory']:6d} {r['full_s'] * 1e3:8.1f}ms "
                         f"{r['lcirc_s'] * 1e3:8.1f}ms {r['speedup']:7.2f}x "
                         f"{100 * r['flops_lcirc_half'] / r['flops_full_half']:6.2f}% "
                         f"{'-' if dc is None else f'{dc:.1f}/s':>10s} "
                         f"{'-' if dr is None else f'{dr:.1f}/s':>10s}")
            by = r.get("lcirc_s_by_backend") or {}
            if len(by) > 1:
                lines.append("            LCIRC by backend: " + ", ".join(
                    f"{b} {t * 1e3:.1f}ms" for b, t in by.items()))
    for r in rows:
        if r.get("kind") == "e2e_decode":
            lines.append(f"decode at {r['memory']} memory vectors: cached {r['cached_tok_s']:.1f} tok/s, "
                         f"re-projected {r['recompute_tok_s']:.1f} tok/s ({r['ratio']:.2f}x); "
                         f"memory K/V projection alone {r['kv_projection_ms']:.2f} ms/token")
        elif r.get("kind") == "e2e_meta" and r.get("plot"):
            lines.append(f"e2e plot: {r['plot']}")
        elif r.get("kind") == "skipped":
            what = {k: v for k, v in r.items() if k not in ("kind", "section")}
            lines.append(f"skipped: {what}")
        elif r.get("kind") == "error":
            lines.append(f"ERROR in section {r['section']}: {r['error']}")
        elif r.get("kind") == "compress_best":
            lines.append(f"compress best: {r['backend']} hoist {r['hoist']} graphs "
                         f"{'on' if r['cuda_graphs'] else 'off'}: {r['tflops']:.1f} TFLOP/s = "
                         f"{100 * r['frac_peak']:.1f}% of {PEAK_TFLOPS:.0f} (goal 50%: "
                         f"{'met' if r['goal_met'] else 'NOT met'})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="gpu_suite.json", help="JSON results path")
    ap.add_argument("--section", action="append", default=None,
                    help="run only these sections (repeatable); default: all registered")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny shapes on the CPU through the Triton interpreter")
    ap.add_argument("--dry-run", action="store_true", help="list the sections and exit")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                    help="no section starts after this many seconds (default %(default)s)")
    args = ap.parse_args(argv)
    if not args.budget_s > 0:
        ap.error(f"--budget-s must be > 0, got {args.budget_s}")
    names = args.section or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; known: {list(SECTIONS)}")
    if args.dry_run:
        print("sections:", ", ".join(names))
        for n in names:
            if n in SECTION_BUDGET_S:
                print(f"  {n}: budget {SECTION_BUDGET_S[n]:.0f}s")
        return 0
    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
    import torch
    if not args.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device: use --cpu-smoke or --dry-run", file=sys.stderr)
        return 2
    os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")
    if args.cpu_smoke:
        torch.set_num_threads(1)  # tiny ops: extra threads only wait on each other
    suite = Suite(args=args, device="cpu" if args.cpu_smoke else "cuda", smoke=args.cpu_smoke)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    suite.deadline = t0 + args.budget_s
    result = {}
    for n in names:
        suite.current = n
        ts = time.perf_counter()
        if suite.deadline - ts < MIN_SECTION_S:
            suite.record(kind="skipped", what="section", reason="time budget",
                         left_s=round(suite.deadline - ts, 1))
            print(f"[{n}] skipped: {suite.deadline - ts:.0f}s of the budget left", flush=True)
            continue
        suite.section_deadline = min(suite.deadline, ts + SECTION_BUDGET_S.get(n, math.inf))
        try:
            SECTIONS[n](suite)
        except Exception as exc:  # keep the other sections' results
            suite.green = False
            suite.record(kind="error", error=f"{type(exc).__name__}: {exc}",
                         traceback=traceback.format_exc())
            traceback.print_exc()
        print(f"[{n}] {time.perf_counter() - ts:.1f}s", flush=True)
        result = dict(green=suite.green, seconds=time.perf_counter() - t0, rows=suite.rows)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
    result = dict(green=suite.green, seconds=time.perf_counter() - t0, rows=suite.rows)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, default=str)
    print(_table(suite.rows))
    print(f"correctness: {'GREEN' if suite.green else 'RED'}; wrote {args.out} "
          f"({result['seconds']:.1f}s)")
    return 0 if suite.green else 1


if __name__ == "__main__":
    sys.exit(main())
