"""Ahead-of-time compile check of the Triton kernels for NVIDIA targets, without a GPU.

The host wrappers run on CPU tensors with the kernel launches intercepted: each launch (and, for
an autotuned kernel, each config its pruning leaves) becomes a compile job built from the bound
arguments, exactly as the JIT would build it on the GPU. ``triton.compile`` then targets
``GPUTarget("cuda", arch, 32)``; the ptxas ``-v`` log gives registers and spills, the metadata
gives shared memory, and the PTX gives the instruction mix (tensor-core MMAs, vector loads).

Must run with ``TRITON_INTERPRET`` unset (the test suite calls it in a subprocess)::

    python tools/aot_compile.py --arch 90 --out docs/perf/aot-sm90.md
    python tools/aot_compile.py --subset default --json out.json
    python tools/aot_compile.py --launches-only --scenario grid_4096x32 --json grid.json

Results are cached (JSON per variant) under ``$LCIRC_AOT_CACHE`` (default
``~/.cache/lcirc_fast/aot``), keyed by the kernel's source hash, its specialisation, the
options, the target and the triton version.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

SHARED_LIMIT = {90: 232_448, 80: 166_912}  # bytes of shared memory per block (opt-in maximum)
MAX_REGS = 255
MARGIN_REGS = 240  # registers a config may use and still count as clear of the limit
MARGIN_SHARED = 0.95  # fraction of the shared-memory limit likewise
GRID_X_MAX = 2 ** 31 - 1
GRID_YZ_MAX = 65_535
H200_SMS = 132
A100_SMS = 108

ATTN_DTYPES = ("bf16", "fp16", "fp32", "fp32-ieee")
ELEM_DTYPES = ("bf16", "fp16", "fp32")
HEAD_DIMS = (64, 128)


@dataclasses.dataclass
class Launch:
    """One intercepted launch: the compile job a GPU would build, plus the grid it would use."""
    kernel: str
    fn: object
    grid: tuple
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    config: dict | None

    def key(self, arch: int) -> str:
        import triton
        blob = json.dumps([self.kernel, self.fn.cache_key, sorted(self.signature.items()),
                           sorted((str(k), repr(v)) for k, v in self.constexprs.items()),
                           sorted((str(k), repr(v)) for k, v in self.attrs.items()),
                           sorted((k, repr(v)) for k, v in self.options.items()),
                           arch, triton.__version__], default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _target(arch: int):
    from triton.backends.compiler import GPUTarget
    return GPUTarget("cuda", arch, 32)


@contextlib.contextmanager
def intercept(arch: int, sms: int):
    """Record launches instead of running them; autotuned kernels record every pruned config.

    The host wrappers are patched to accept CPU tensors and to see ``sms`` multiprocessors.
    """
    from triton.compiler import make_backend
    from triton.runtime import autotuner, jit

    from lcirc_fast.ops.cross_attn import function as attn_fn
    from lcirc_fast.ops.layernorm import function as ln_fn
    from lcirc_fast.ops.tanh_gate import function as gated_fn

    backend = make_backend(_target(arch))
    records: list[Launch] = []
    current_cfg: list = [None]

    def jit_run(self, *args, grid, warmup, **kwargs):
        kwargs["debug"] = kwargs.get("debug", self.debug)
        binder = jit.create_function_from_signature(self.signature, self.params, backend)
        bound, spec, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = self._pack_args(backend, kwargs, bound, spec, options)
        g = grid(bound) if callable(grid) else grid
        g = tuple(int(x) for x in g) + (1,) * (3 - len(g))
        records.append(Launch(self.fn.__name__, self, g, dict(signature), dict(constexprs), dict(attrs),
                              dict(options.__dict__), current_cfg[0]))
        return None

    def autotune_run(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        for cfg in self.prune_configs(kwargs):
            current_cfg[0] = dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
            self.fn.run(*args, **kwargs, **cfg.all_kwargs())
        current_cfg[0] = None
        self.nargs = None

    from lcirc_fast.ops.utils import runtime
    patches = [(jit.JITFunction, "run", jit_run), (autotuner.Autotuner, "run", autotune_run)]
    if hasattr(runtime, "capability"):
        patches.append((runtime, "capability", lambda device: arch))
    for mod in (attn_fn, gated_fn, ln_fn):
        if hasattr(mod, "check_device"):
            patches.append((mod, "check_device", lambda *t: None))
        if hasattr(mod, "not_supported_reasons"):
            patches.append((mod, "not_supported_reasons", lambda *t: []))
        if hasattr(mod, "num_sms"):
            patches.append((mod, "num_sms", lambda device: sms))
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
    try:
        for obj, name, new in patches:
            setattr(obj, name, new)
        yield records
    finally:
        for obj, name, old in saved:
            setattr(obj, name, old)


# ---------------------------------------------------------------------------------------------
# Scenarios: the launches the model makes (shapes from the paper: 32 heads, Perceiver 64 x 4096,
# GCA prefill 4096 x 3968, hidden 4096).

_TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp32-ieee": "float32"}


def _tdt(name: str):
    import torch
    return getattr(torch, _TORCH_DTYPE[name])


def _attn_kwargs(dtype: str) -> dict:
    from lcirc_fast.ops.cross_attn import function as attn_fn
    if dtype != "fp32-ieee":
        return {}
    if "allow_tf32" not in inspect.signature(attn_fn.cross_attention).parameters:
        return {}  # kernels without the option: fp32 already runs the IEEE path
    return {"allow_tf32": False}


def _attention(B, Lq, Lk, H, D, dtype, deterministic=False, varlen=False):
    import torch

    from lcirc_fast.ops.cross_attn import function as attn_fn
    dt = _tdt(dtype)
    q = torch.zeros(B, Lq, H, D, dtype=dt, requires_grad=True)
    kw = dict(deterministic=deterministic, **_attn_kwargs(dtype))
    if varlen:
        k = torch.zeros(B * Lk, H, D, dtype=dt, requires_grad=True)
        v = torch.zeros(B * Lk, H, D, dtype=dt, requires_grad=True)
        cu = torch.arange(B + 1, dtype=torch.int32) * Lk
        o = attn_fn.cross_attention_varlen(q, k, v, cu, Lk, **kw)
    else:
        k = torch.zeros(B, Lk, H, D, dtype=dt, requires_grad=True)
        v = torch.zeros(B, Lk, H, D, dtype=dt, requires_grad=True)
        o = attn_fn.cross_attention(q, k, v, **kw)
    o.backward(torch.zeros_like(o))


def _gated(dtype, T=4096, d=4096):
    import torch

    from lcirc_fast.ops.tanh_gate import function as gated_fn
    dt = _tdt(dtype)
    x = torch.zeros(1, T, d, dtype=dt, requires_grad=True)
    y = torch.zeros(1, T, d, dtype=dt, requires_grad=True)
    g = torch.zeros((), requires_grad=True)
    out = gated_fn.gated_residual(x, y, g)
    out.backward(torch.zeros_like(out))


def _layernorm(dtype, L=2048, d=4096):
    import torch

    from lcirc_fast.ops.layernorm import function as ln_fn
    dt = _tdt(dtype)
    x = torch.zeros(1, L, d, dtype=dt, requires_grad=True)
    pos = torch.zeros(L, d, dtype=dt, requires_grad=True)
    w = torch.ones(d, dtype=dt, requires_grad=True)
    b = torch.zeros(d, dtype=dt, requires_grad=True)
    y = ln_fn.layer_norm(x, w, b, 1e-5, add=pos)
    y.backward(torch.zeros_like(y))


def scenario_fns(name: str, dtype: str, D: int):
    """Callable that makes the launches of scenario ``name``."""
    table = {
        "perceiver": lambda: _attention(1, 64, 4096, 32, D, dtype),
        "perceiver_det": lambda: _attention(1, 64, 4096, 32, D, dtype, deterministic=True),
        "perceiver_varlen": lambda: _attention(2, 64, 2048, 32, D, dtype, varlen=True),
        "gca": lambda: _attention(1, 4096, 3968, 32, D, dtype),
        "grid_4096x32": lambda: _attention(4096, 1, 1, 32, D, dtype),
        "gated": lambda: _gated(dtype),
        "layernorm": lambda: _layernorm(dtype),
    }
    return table[name]


ATTN_SCENARIOS = ("perceiver", "perceiver_det", "perceiver_varlen", "gca")
ELEM_SCENARIOS = ("gated", "layernorm")


def plan(subset: str, archs=(90,), dtypes=None, dims=None) -> list[tuple]:
    """(scenario, dtype, D, arch) cases. ``default``: D=128 bf16 on sm_90 (the paper's shape) plus
    one fp32 and one sm_80 case; ``full``: every dtype, D in {64, 128}, every arch given."""
    if subset == "default":
        cases = [(s, "bf16", 128, 90) for s in ("perceiver", "perceiver_det", "gca")]
        cases += [(s, "bf16", 0, 90) for s in ELEM_SCENARIOS]
        cases += [("perceiver", "fp32", 128, 90), ("perceiver", "bf16", 128, 80)]
        return cases
    cases = []
    for arch in archs:
        for dt in (dtypes or ATTN_DTYPES):
            for D in (dims or HEAD_DIMS):
                cases += [(s, dt, D, arch) for s in ATTN_SCENARIOS]
        for dt in (dtypes or ELEM_DTYPES):
            if dt in ELEM_DTYPES:
                cases += [(s, dt, 0, arch) for s in ELEM_SCENARIOS]
    return cases


def collect(scenario: str, dtype: str, D: int, arch: int) -> list[Launch]:
    sms = H200_SMS if arch >= 90 else A100_SMS
    with intercept(arch, sms) as recs:
        scenario_fns(scenario, dtype, D)()
    return recs


# ---------------------------------------------------------------------------------------------
# Compile and measure.

_RE_REGS = re.compile(r"Used (\d+) registers")
_RE_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas_log(log: str) -> dict:
    """Registers, stack and spill bytes from a ``ptxas -v`` log (one entry function)."""
    regs = [int(x) for x in _RE_REGS.findall(log)]
    spills = [tuple(map(int, m)) for m in _RE_SPILL.findall(log)]
    if not regs:
        raise ValueError(f"no register count in the ptxas log:\n{log}")
    return dict(regs=max(regs), stack=max((s[0] for s in spills), default=0),
                spill_stores=max((s[1] for s in spills), default=0),
                spill_loads=max((s[2] for s in spills), default=0))


def ptx_counts(ptx: str) -> dict:
    """Instruction mix: tensor-core MMAs, vector / scalar global loads, async copies."""
    lines = [ln.strip() for ln in ptx.splitlines()]
    ld = [ln for ln in lines if ln.startswith(("ld.global", "@")) and "ld.global" in ln]
    return dict(
        wgmma=sum("wgmma.mma_async" in ln for ln in lines),
        mma=sum(ln.startswith("mma.sync") for ln in lines),
        ld_v4=sum(".v4." in ln for ln in ld),
        ld_v2=sum(".v2." in ln for ln in ld),
        ld_scalar=sum(".v2." not in ln and ".v4." not in ln for ln in ld),
        cp_async=sum("cp.async" in ln and "commit" not in ln and "wait" not in ln for ln in lines),
        fma=sum(ln.startswith("fma.rn.f32") for ln in lines),
    )


def _cache_dir() -> Path:
    return Path(os.environ.get("LCIRC_AOT_CACHE", Path.home() / ".cache" / "lcirc_fast" / "aot"))


def compile_launch(launch: Launch, arch: int, use_cache: bool = True) -> dict:
    """Compile one launch for ``arch``; returns registers, spills, shared memory and PTX counts."""
    import triton
    from triton.compiler import ASTSource
    key = launch.key(arch)
    path = _cache_dir() / f"{key}.json"
    if use_cache and path.exists():
        return json.loads(path.read_text())
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    src = ASTSource(fn=launch.fn, signature=launch.signature, constexprs=launch.constexprs,
                    attrs=launch.attrs)
    buf = io.StringIO()
    t0 = time.perf_counter()
    res: dict = {}
    try:
        with contextlib.redirect_stdout(buf):
            ck = triton.compile(src, target=_target(arch), options=launch.options)
        res.update(parse_ptxas_log(buf.getvalue()))
        res.update(ptx_counts(ck.asm["ptx"]))
        md = ck.metadata
        res.update(shared=int(md.shared), num_warps=int(md.num_warps), num_stages=int(md.num_stages),
                   ok=True)
    except Exception as e:  # noqa: BLE001 - a failed compile is a result to report
        res.update(ok=False, error=f"{type(e).__name__}: {str(e)[:500]}")
    res["compile_s"] = round(time.perf_counter() - t0, 2)
    if use_cache and res.get("ok"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res))
    return res


def _summary(launch: Launch) -> dict:
    c = launch.constexprs
    get = lambda name: next((v for k, v in c.items() if launch.fn.arg_names[k[0]] == name), None)  # noqa: E731
    flags = {}
    for name in ("NSPLIT", "ATOMIC_DQ", "PREC", "UPCAST", "VARLEN_K", "STORE_LSE", "NEED_DY", "NEED_DG",
                 "BLOCK", "BLOCK_D", "BLOCK_R", "HAS_ADD", "NEED_DX"):
        val = get(name)
        if val is not None:
            flags[name] = val if isinstance(val, (int, str, bool)) else str(val)
    cfg = launch.config or {}
    return dict(kernel=launch.kernel, grid=list(launch.grid), flags=flags,
                config=[cfg.get("BLOCK_M"), cfg.get("BLOCK_N"), launch.options.get("num_warps"),
                        launch.options.get("num_stages")] if cfg else None,
                autotuned=bool(cfg),
                dtypes=sorted({v for v in launch.signature.values() if str(v).startswith("*")}))


def run(cases, launches_only=False, use_cache=True, log=None) -> list[dict]:
    """Collect the launches of every case, compile each distinct variant once; one row per variant."""
    rows, seen = [], {}
    for scenario, dtype, D, arch in cases:
        for launch in collect(scenario, dtype, D, arch):
            key = launch.key(arch)
            if key in seen:
                seen[key]["scenarios"].append(scenario)
                seen[key]["grids"].append(list(launch.grid))
                continue
            row = dict(_summary(launch), scenarios=[scenario], dtype=dtype, D=D, arch=arch, key=key)
            row["grids"] = [row["grid"]]
            if not launches_only:
                row.update(compile_launch(launch, arch, use_cache))
                if log:
                    log(_fmt_row(row))
            seen[key] = row
            rows.append(row)
    return rows


def _fmt_row(r: dict) -> str:
    cfg = "x".join(str(x) for x in r["config"]) if r.get("config") else "-"
    if not r.get("ok", True):
        return f"{r['kernel']:<24} {r['dtype']:<9} D={r['D']:<3} sm_{r['arch']} {cfg:<14} FAILED {r['error']}"
    return (f"{r['kernel']:<24} {r['dtype']:<9} D={r['D']:<3} sm_{r['arch']} {cfg:<14} regs={r['regs']:<3} "
            f"spill={r['spill_stores']}/{r['spill_loads']} smem={r['shared']:<6} wgmma={r['wgmma']} "
            f"mma={r['mma']} v4={r['ld_v4']} v2={r['ld_v2']} cp.async={r['cp_async']} "
            f"({r['compile_s']}s)")


def problems(rows: list[dict], margin: bool = False) -> list[str]:
    """Violations: failed compiles, spills, registers > 255, shared memory over the arch limit.

    With ``margin``: also registers above MARGIN_REGS and shared memory above MARGIN_SHARED of the
    limit (what the config tables keep clear of, so that compiler changes do not tip them over).
    """
    out = []
    for r in rows:
        name = f"{r['kernel']} {r['dtype']} D={r['D']} sm_{r['arch']} cfg={r.get('config')} {r['flags']}"
        if not r.get("ok"):
            out.append(f"{name}: compile failed: {r.get('error')}")
            continue
        lim = SHARED_LIMIT[r["arch"]]
        if r["spill_stores"] or r["spill_loads"]:
            out.append(f"{name}: spills {r['spill_stores']}/{r['spill_loads']} bytes")
        if r["regs"] > MAX_REGS or (margin and r["regs"] > MARGIN_REGS):
            out.append(f"{name}: {r['regs']} registers")
        if r["shared"] > lim or (margin and r["shared"] > MARGIN_SHARED * lim):
            out.append(f"{name}: {r['shared']} bytes of shared memory (limit {lim})")
    return out


def grid_problems(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        for x, y, z in r.get("grids", [r["grid"]]):
            if not (1 <= x <= GRID_X_MAX and 1 <= y <= GRID_YZ_MAX and 1 <= z <= GRID_YZ_MAX):
                out.append(f"{r['kernel']}: illegal grid {[x, y, z]}")
    return out


# ---------------------------------------------------------------------------------------------
# Report.

def _cells(r: dict | None) -> list[str]:
    if r is None:
        return ["—"] * 5
    if not r.get("ok"):
        return ["fail"] + ["—"] * 4
    spill = f"{r['spill_stores']}/{r['spill_loads']}" if (r["spill_stores"] or r["spill_loads"]) else "0"
    parts = [f"{r[k]} {k}" for k in ("wgmma", "mma") if r[k]]
    mma_s = " + ".join(parts) if parts else "0"
    return [str(r["regs"]), spill, f"{r['shared']:,}", f"{r['ld_v4']}/{r['ld_v2']}", mma_s]


def _row_id(r: dict) -> tuple:
    f = r["flags"]
    variant = ",".join(f"{k}={f[k]}" for k in ("NSPLIT", "ATOMIC_DQ", "VARLEN_K") if k in f and f[k] not in (False,))
    return (r["kernel"], r["dtype"], r["D"], r["arch"], tuple(r["config"] or ()), variant)


def _agg(rows: list[dict]) -> dict:
    out: dict = {}
    for r in rows:
        a = out.setdefault((r["arch"], r["kernel"], r["dtype"], r["D"]),
                           dict(n=0, fail=0, regs=0, spill=0, spilling=0, smem=0, v4=0, mma=0))
        a["n"] += 1
        if not r.get("ok"):
            a["fail"] += 1
            continue
        sp = max(r["spill_stores"], r["spill_loads"])
        a["regs"] = max(a["regs"], r["regs"])
        a["spill"] = max(a["spill"], sp)
        a["spilling"] += sp > 0
        a["smem"] = max(a["smem"], r["shared"])
        a["v4"] = max(a["v4"], r["ld_v4"])
        a["mma"] = max(a["mma"], r["wgmma"] + r["mma"])
    return out


def _summary_table(rows: list[dict], before: list[dict]) -> list[str]:
    """Per kernel, dtype and head dim: configs, worst registers / spill / shared memory."""
    a, b = _agg(rows), _agg(before)
    for k, v in list(b.items()):
        ieee = k[:2] + ("fp32-ieee",) + k[3:]
        if k[2] == "fp32" and ieee in a:
            b.setdefault(ieee, v)
    lines = ["## Summary (worst case over the configs and variants of each kernel)", "",
             "| arch | kernel | dtype | D | variants before → after | spilling | max spill B | max regs | "
             "max smem | max v4 loads | tensor-core instr. |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(set(a) | set(b), key=lambda k: (-k[0], k[1], k[2], k[3])):
        x, y = b.get(key), a.get(key)
        f = lambda d, name: "—" if d is None else (f"{d[name]:,}" if name == "smem" else str(d[name]))  # noqa: E731
        pair = lambda name: f"{f(x, name)} → {f(y, name)}"  # noqa: E731
        lines.append(f"| sm_{key[0]} | `{key[1]}` | {key[2]} | {key[3] or '-'} | {pair('n')} | {pair('spilling')} | "
                     f"{pair('spill')} | {pair('regs')} | {pair('smem')} | {pair('v4')} | {pair('mma')} |")
    return lines + [""]


def markdown(rows: list[dict], before: list[dict] | None, command: str, commit: str,
             before_commit: str | None, before_command: str | None, notes: str = "") -> str:
    import triton
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Ahead-of-time compile check for NVIDIA GPUs (registers, spills, shared memory)", "",
        f"* **Date:** {now}; triton {triton.__version__} (ptxas from the wheel), no GPU.",
        f"* **After** (commit `{commit}`): `{command}`",
    ]
    if before is not None:
        lines.append(f"* **Before** (commit `{before_commit}`): `{before_command}`")
    lines += [
        "* Limits: 255 registers per thread; shared memory per block 232,448 bytes (sm_90) / "
        "166,912 (sm_80); grid y, z <= 65,535.",
        "* Columns: registers, spill stores/loads (bytes per thread), shared memory (bytes), "
        "`ld.global.v4`/`.v2` count in the PTX, tensor-core instructions (`wgmma` on sm_90, "
        "`mma.sync` on sm_80; 0 means the dots run on FMA units). `variant` names the "
        "specialisation (split-KV, atomic dQ, packed keys). Config: BLOCK_M x BLOCK_N x warps x "
        "stages. A before-row with no after-row is a config the head-dim/dtype pruning removed; "
        "`fp32` is the default (tf32 after the fix, IEEE before), `fp32-ieee` the opt-in IEEE path.",
        "",
    ]
    if notes:
        lines += [notes.strip(), ""]
    bmap = {_row_id(r): r for r in (before or [])}
    amap = {_row_id(r): r for r in rows}
    if before is not None:
        # Kernels without the IEEE option ran fp32 on the IEEE path: that is the baseline of both.
        for i, r in list(bmap.items()):
            if i[1] == "fp32":
                bmap.setdefault((i[0], "fp32-ieee") + i[2:], r)
        lines += _summary_table(rows, before)
    ids = sorted(set(amap) | set(bmap), key=lambda t: (t[3], t[0], t[1], t[2], t[5], t[4]))
    ids = [i for i in ids if i in amap or i[1] != "fp32-ieee"]
    groups: dict = {}
    for i in ids:
        groups.setdefault((i[3], i[0]), []).append(i)
    for (arch, kernel), gids in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        lines += [f"## `{kernel}` (sm_{arch})", ""]
        head = ["dtype", "D", "variant", "config"]
        cols = ["regs", "spill", "smem", "v4/v2", "MMA"]
        if before is not None:
            head += [f"{c} before" for c in cols] + [f"{c} after" for c in cols]
        else:
            head += cols
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for i in gids:
            cfg = "x".join(str(x) for x in i[4]) if i[4] else "-"
            cells = [i[1], str(i[2] or "-"), i[5] or "-", cfg]
            if before is not None:
                cells += _cells(bmap.get(i)) + _cells(amap.get(i))
            else:
                cells += _cells(amap.get(i))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tools/aot_compile.py", description=__doc__.split("\n")[0])
    p.add_argument("--subset", choices=("default", "full"), default="full")
    p.add_argument("--arch", type=int, action="append", choices=sorted(SHARED_LIMIT))
    p.add_argument("--dtype", action="append", choices=ATTN_DTYPES)
    p.add_argument("--dim", type=int, action="append")
    p.add_argument("--scenario", action="append", help="only these scenarios")
    p.add_argument("--launches-only", action="store_true", help="record launches and grids, compile nothing")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--out", help="write a markdown report here")
    p.add_argument("--before", help="rows (JSON) of a baseline run, shown next to these")
    p.add_argument("--before-commit")
    p.add_argument("--before-command")
    p.add_argument("--notes", help="markdown file inserted after the report's header")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    from lcirc_fast.ops.utils.runtime import interpreting
    if interpreting():
        p.error("unset TRITON_INTERPRET: the compile check needs the real JIT path")
    if a.scenario and a.subset == "default":
        p.error("--scenario selects from the full matrix")
    cases = plan(a.subset, tuple(a.arch or (90,)), a.dtype, a.dim)
    if a.scenario:
        scen = set(a.scenario)
        cases = [c for c in cases if c[0] in scen]
        cases += [(s, dt, D, ar) for s in scen if s == "grid_4096x32"
                  for dt in (a.dtype or ["bf16"]) for D in (a.dim or [128]) for ar in (a.arch or [90])]
    log = None if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    rows = run(cases, launches_only=a.launches_only, use_cache=not a.no_cache, log=log)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=str))
    if a.out:
        before = json.loads(Path(a.before).read_text()) if a.before else None
        cmd = "python tools/aot_compile.py " + " ".join(argv if argv is not None else sys.argv[1:])
        notes = Path(a.notes).read_text() if a.notes else ""
        Path(a.out).write_text(markdown(rows, before, cmd, _commit(), a.before_commit, a.before_command, notes))
    bad = grid_problems(rows) + ([] if a.launches_only else problems(rows))
    for b in bad:
        print("PROBLEM:", b, file=sys.stderr)
    print(json.dumps(dict(variants=len(rows), problems=len(bad))))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
