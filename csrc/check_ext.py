"""GPU check of the CUDA extension: build it, compare its ops against torch, time them.

Run on a CUDA machine from the repository root:

    python csrc/check_ext.py [--out results.json] [--no-build] [--skip-bench]

Steps: (1) ``LCIRC_BUILD_EXT=1 python setup.py build_ext --inplace`` (CMake), falling back to a
``torch.utils.cpp_extension.load`` JIT build if that fails; (2) the plain C API through ctypes on a
library built with nvcc alone; (3) correctness of every op against torch in fp32 / fp16 / bf16,
determinism (bitwise-equal repeats) and ``torch.library.opcheck``; (4) benchmarks, only for the ops
whose checks passed. Prints a table last and writes everything to JSON. Importing this file does
nothing; on a machine without CUDA ``main`` exits with status 2.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


# ---- torch references (also exercised on CPU by tests/test_csrc.py) -------------------------

def gated_residual_reference(x, o, gate):
    """Eager y = x + tanh(gate) * o in x's dtype (gate: 1 or C elements)."""
    import torch

    t = torch.tanh(gate.float()).reshape(-1)
    t = t[0] if t.numel() == 1 else t
    return x + (t * o.float()).to(x.dtype)


def gated_residual_backward_reference(grad_y, o, gate):
    """(grad_o, grad_gate) of y = x + tanh(gate) * o, computed in fp64 then cast back."""
    import torch

    g = gate.double().reshape(-1)
    t = torch.tanh(g)
    prod = grad_y.double() * o.double()
    if g.numel() == 1:
        d_g = (prod.sum() * (1 - t * t)).reshape(gate.shape)
        d_o = t[0] * grad_y.double()
    else:
        d_g = (prod.reshape(-1, g.numel()).sum(0) * (1 - t * t)).reshape(gate.shape)
        d_o = t * grad_y.double()
    return d_o.to(grad_y.dtype), d_g.to(gate.dtype)


# ---- build ------------------------------------------------------------------------------------

def build_extension(log: dict) -> str:
    """Build lcirc_fast._C in place (CMake via setup.py); on failure, JIT-build the same sources."""
    env = dict(os.environ, LCIRC_BUILD_EXT="1")
    env.setdefault("LCIRC_CUDA_ARCHS", "90")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=480)
    log["cmake_build_s"] = round(time.perf_counter() - t0, 1)
    log["cmake_build_rc"] = r.returncode
    if r.returncode == 0:
        return "cmake"
    log["cmake_build_tail"] = (r.stdout + r.stderr)[-4000:]
    print(log["cmake_build_tail"], file=sys.stderr)
    from torch.utils import cpp_extension

    t0 = time.perf_counter()
    cpp_extension.load(
        name="lcirc_fast_c_jit",
        sources=[str(CSRC / "bindings.cpp"), *map(str, sorted((CSRC / "kernels").glob("*.cu")))],
        extra_include_paths=[str(CSRC / "include")],
        extra_cuda_cflags=["-gencode=arch=compute_90,code=sm_90", "-std=c++17"],
        is_python_module=False,
        verbose=False,
    )
    log["jit_build_s"] = round(time.perf_counter() - t0, 1)
    return "jit"


def build_plain_library(out_dir: Path) -> Path:
    """The kernels alone, built with nvcc (no torch), for the ctypes C-API check."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    lib = out_dir / "liblcirc_kernels.so"
    cmd = [nvcc, "-shared", "-Xcompiler", "-fPIC", "-arch=sm_90", "-std=c++17", "-cudart=shared",
           f"-I{CSRC / 'include'}", *map(str, sorted((CSRC / "kernels").glob("*.cu"))), "-o", str(lib)]
    subprocess.run(cmd, check=True, timeout=300)
    return lib


# ---- checks -----------------------------------------------------------------------------------

def _err(a, b):
    return (a.double() - b.double()).abs().max().item()


def check_c_api(lib_path: Path, results: list) -> None:
    import torch

    lib = ctypes.CDLL(str(lib_path))
    f = lib.lcirc_gated_residual_fwd
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int, ctypes.c_void_p]
    x = torch.randn(333, 129, device="cuda")
    o = torch.randn_like(x)
    g = torch.tensor([0.7], device="cuda")
    y = torch.full_like(x, float("nan"))
    stream = torch.cuda.current_stream().cuda_stream
    rc = f(x.data_ptr(), o.data_ptr(), g.data_ptr(), y.data_ptr(), 333, 129, 1, 0, stream)
    torch.cuda.synchronize()
    err = _err(y, x + math.tanh(0.7) * o)
    results.append(dict(check="c_api gated_residual fp32 (ctypes)", ok=rc == 0 and err < 1e-5, err=err))


def check_ops(results: list) -> None:
    import torch

    ops = torch.ops.lcirc
    dev = "cuda"

    # gated residual forward / backward, scalar and per-channel gates.
    rows, cols = 8192, 4096
    for dt, atol in ((torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
        for gate in (torch.tensor(0.6, device=dev), torch.randn(cols, device=dev) * 0.5):
            kind = "scalar" if gate.dim() == 0 else "channel"
            x, o, dy = (torch.randn(rows, cols, device=dev, dtype=dt) for _ in range(3))
            ref32 = x.float() + torch.tanh(gate.float()) * o.float()
            y = ops.cuda_gated_residual(x, o, gate)
            e, e_t = _err(y, ref32), _err(gated_residual_reference(x, o, gate), ref32)
            results.append(dict(check=f"gated_residual fwd {dt} {kind}", ok=e <= 2 * e_t + atol,
                                err=e, torch_err=e_t))
            d_o, d_g = ops.cuda_gated_residual_backward(dy, o, gate)
            reps = [ops.cuda_gated_residual_backward(dy, o, gate) for _ in range(3)]
            det = all(torch.equal(r[0], d_o) and torch.equal(r[1], d_g) for r in reps)
            r_o, r_g = gated_residual_backward_reference(dy, o, gate)
            e_o = _err(d_o, r_o)
            exact_g = gated_residual_backward_reference(dy.double(), o.double(), gate.double())[1]
            # Error relative to sum |dy * o| * (1 - tanh^2): the scale fp32 rounding works at.
            scale = gated_residual_backward_reference(dy.double().abs(), o.double().abs(), gate.double())[1]
            rel_g = ((d_g.double() - exact_g).abs() / scale.clamp_min(1e-30)).max().item()
            ok = det and d_g.shape == gate.shape and d_g.dtype == gate.dtype and e_o <= atol \
                and rel_g < 1e-5
            results.append(dict(check=f"gated_residual bwd {dt} {kind}", ok=ok, err=e_o,
                                rel_gate_err=rel_g, deterministic=det))

    # Bad input is refused with a message naming the problem.
    try:
        ops.cuda_gated_residual(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(1))
        refused = False
    except RuntimeError as exc:
        refused = "CUDA tensors" in str(exc)
    results.append(dict(check="cpu input refused", ok=refused))

    try:
        from torch.library import opcheck

        x = torch.randn(37, 24, device=dev, dtype=torch.bfloat16)
        g = torch.tensor([0.3], device=dev)
        tests = ("test_schema", "test_faketensor")
        opcheck(ops.cuda_gated_residual.default, (x, x.clone(), g), test_utils=tests)
        opcheck(ops.cuda_gated_residual_backward.default, (x, x.clone(), g), test_utils=tests)
        results.append(dict(check="opcheck schema + fake", ok=True))
    except Exception as exc:  # report, do not abort the remaining checks
        results.append(dict(check="opcheck schema + fake", ok=False, error=repr(exc)[:500]))


# ---- benchmarks ---------------------------------------------------------------------------------

def _time_ms(fn, iters=50):
    import torch

    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def bench(results: list, rows_out: list) -> None:
    import torch

    ok = {r["check"]: r["ok"] for r in results}
    ops = torch.ops.lcirc
    rows, cols = 8192, 4096
    x, o, dy = (torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    gate = torch.tensor(0.6, device="cuda")
    nbytes = x.numel() * x.element_size()
    if ok.get("gated_residual fwd torch.bfloat16 scalar"):
        t_k = _time_ms(lambda: ops.cuda_gated_residual(x, o, gate))
        t_t = _time_ms(lambda: gated_residual_reference(x, o, gate))
        rows_out.append(dict(op="gated_residual fwd bf16 8192x4096", ms=t_k, torch_ms=t_t,
                             gbps=3 * nbytes / t_k / 1e6, speedup=t_t / t_k))
    if ok.get("gated_residual bwd torch.bfloat16 scalar"):
        def eager_bwd():
            t = torch.tanh(gate)
            return t * dy, ((dy.float() * o.float()).sum() * (1 - t * t))

        t_k = _time_ms(lambda: ops.cuda_gated_residual_backward(dy, o, gate))
        t_t = _time_ms(eager_bwd)
        rows_out.append(dict(op="gated_residual bwd bf16 8192x4096", ms=t_k, torch_ms=t_t,
                             gbps=3 * nbytes / t_k / 1e6, speedup=t_t / t_k))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "check_ext.json"))
    ap.add_argument("--no-build", action="store_true", help="use an already built lcirc_fast._C")
    ap.add_argument("--skip-bench", action="store_true")
    args = ap.parse_args(argv)

    import torch

    if not torch.cuda.is_available() or torch.version.cuda is None:
        print("check_ext.py needs a CUDA device and a CUDA build of torch "
              f"(torch {torch.__version__}, cuda available: {torch.cuda.is_available()})",
              file=sys.stderr)
        return 2
    log = dict(torch=torch.__version__, cuda=torch.version.cuda,
               device=torch.cuda.get_device_name(), python=sys.version.split()[0])
    results: list = []
    sys.path.insert(0, str(ROOT))
    how = "prebuilt" if args.no_build else build_extension(log)
    log["build"] = how
    if how == "jit":
        from lcirc_fast._ext import _register_fakes
        from lcirc_fast.ops.cuda_ops import register_extension_ops

        _register_fakes()
        register_extension_ops()        # the ops registry's "cuda" entries, as a prebuilt load does
    else:
        from lcirc_fast import _ext

        if not _ext.extension_available():
            print(f"extension unavailable: {_ext.extension_unavailable_reason()}", file=sys.stderr)
            log["results"] = results
            Path(args.out).write_text(json.dumps(log, indent=1))
            return 1
    out_dir = Path(args.out).resolve().parent
    try:
        check_c_api(build_plain_library(out_dir), results)
    except Exception as exc:
        results.append(dict(check="c_api gated_residual fp32 (ctypes)", ok=False, error=repr(exc)[:500]))
    check_ops(results)
    bench_rows: list = []
    if not args.skip_bench:
        bench(results, bench_rows)
    log["results"], log["bench"] = results, bench_rows
    Path(args.out).write_text(json.dumps(log, indent=1, default=str))

    print(f"\nbuild: {how}  torch {log['torch']}  CUDA {log['cuda']}  {log['device']}")
    for r in results:
        extra = {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in r.items() if k not in ("check", "ok")}
        print(f"{'PASS' if r['ok'] else 'FAIL'}  {r['check']:<42} {extra}")
    for r in bench_rows:
        print(f"BENCH {r['op']:<42} {r['ms']:.4f} ms  torch {r['torch_ms']:.4f} ms  "
              f"{r['gbps']:.0f} GB/s  x{r['speedup']:.2f}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
