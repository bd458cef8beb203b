"""csrc/: the CUDA kernels compile with nvcc, and their math (shared host/device helpers in
csrc/include/lcirc_math.h, run on the host through csrc/reference/host_reference.cpp) matches
torch on random data."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
KERNELS = sorted((CSRC / "kernels").glob("*.cu"))
NVCC = shutil.which("nvcc")
CUDA_ERROR_INVALID_VALUE = 1
P, I64 = ctypes.c_void_p, ctypes.c_int64
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")


def _ptr(t: torch.Tensor):
    assert t.is_contiguous() and t.dtype == torch.float32
    return ctypes.c_void_p(t.data_ptr())


# ---- nvcc --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def nvcc_build(tmp_path_factory):
    """Compile every kernel (-c for sm_90, warnings as errors, PTX kept) and link a shared library."""
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    out = tmp_path_factory.mktemp("nvcc")
    common = ["-arch=sm_90", "-std=c++17", f"-I{CSRC / 'include'}", "--Werror", "all-warnings"]
    procs, objs, ptxs = [], [], []
    for cu in KERNELS:
        keep = out / cu.stem
        keep.mkdir()
        obj = out / f"{cu.stem}.o"
        procs.append(subprocess.Popen([NVCC, "-c", *common, "-Xcompiler", "-fPIC", "--keep",
                                       "--keep-dir", str(keep), str(cu), "-o", str(obj)],
                                      stderr=subprocess.PIPE, text=True))
        objs.append(obj)
        ptxs.append(keep / f"{cu.stem}.ptx")
    errors = [p.communicate()[1] for p in procs if p.wait() != 0]
    assert not errors, "\n".join(errors)
    lib = out / "liblcirc_kernels.so"
    subprocess.run([NVCC, "-shared", "-arch=sm_90", *map(str, objs), "-o", str(lib)], check=True)
    return {"objs": objs, "ptxs": ptxs, "lib": lib}


@needs_nvcc
def test_kernels_compile_for_sm90(nvcc_build):
    assert {p.stem for p in KERNELS} == {"gated_residual"}
    for obj in nvcc_build["objs"]:
        assert obj.stat().st_size > 0
    ptx = "\n".join(p.read_text() for p in nvcc_build["ptxs"])
    assert ".target sm_90" in ptx
    entries = [line for line in ptx.splitlines() if ".entry" in line]
    for name in ("gated_residual_fwd_kernel",
                 "gated_residual_bwd_stage1", "gated_residual_bwd_stage2_channel",
                 "gated_residual_bwd_stage2_scalar"):
        assert any(name in e for e in entries), f"no kernel entry for {name}"
    # One stage-1 instantiation per dtype (float, half, bfloat16).
    assert sum("gated_residual_bwd_stage1" in e for e in entries) == 3


@needs_nvcc
def test_kernel_c_api_rejects_bad_arguments_before_touching_the_device(nvcc_build):
    lib = ctypes.CDLL(str(nvcc_build["lib"]))
    fwd = lib.lcirc_gated_residual_fwd
    fwd.restype, fwd.argtypes = ctypes.c_int, [P, P, P, P, I64, I64, I64, ctypes.c_int, P]
    dummy = 16  # never dereferenced: every call below fails validation or has no work
    assert fwd(dummy, dummy, dummy, dummy, -1, 8, 1, 0, None) == CUDA_ERROR_INVALID_VALUE
    assert fwd(dummy, dummy, dummy, dummy, 4, 8, 3, 0, None) == CUDA_ERROR_INVALID_VALUE  # gate
    assert fwd(dummy, dummy, dummy, dummy, 4, 0, 1, 0, None) == CUDA_ERROR_INVALID_VALUE  # cols
    assert fwd(dummy, dummy, dummy, dummy, 4, 8, 1, 9, None) == CUDA_ERROR_INVALID_VALUE  # dtype
    assert fwd(None, dummy, dummy, dummy, 4, 8, 1, 0, None) == CUDA_ERROR_INVALID_VALUE  # null
    assert fwd(None, None, None, None, 0, 8, 8, 2, None) == 0  # empty: nothing to launch
    bwd = lib.lcirc_gated_residual_bwd
    bwd.restype = ctypes.c_int
    bwd.argtypes = [P, P, P, P, P, P, I64, I64, I64, ctypes.c_int, P]
    assert bwd(dummy, dummy, dummy, dummy, dummy, dummy, 4, 8, 2, 0, None) == CUDA_ERROR_INVALID_VALUE
    assert bwd(dummy, dummy, None, dummy, dummy, dummy, 4, 8, 1, 0, None) == CUDA_ERROR_INVALID_VALUE
    ws = lib.lcirc_gated_residual_bwd_workspace_numel
    ws.restype, ws.argtypes = I64, [I64, I64]
    assert ws(1, 7) == 7 and ws(64, 7) == 7 and ws(65, 7) == 14 and ws(0, 7) == 0


# ---- host reference (same header as the kernels) ------------------------------------------------

@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The host reference library, compiled with the host C++ compiler (or nvcc host-only)."""
    out = tmp_path_factory.mktemp("hostref") / "liblcirc_host_reference.so"
    src, inc = str(CSRC / "reference" / "host_reference.cpp"), f"-I{CSRC / 'include'}"
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx:
        cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-Wall",
               "-Werror", inc, src, "-o", str(out)]
    elif NVCC:
        cmd = [NVCC, "-x", "c++", "-O2", "-std=c++17", "-shared", "-Xcompiler",
               "-fPIC,-ffp-contract=off", inc, src, "-o", str(out)]
    else:
        pytest.skip("no C++ compiler")
    subprocess.run(cmd, check=True)
    lib = ctypes.CDLL(str(out))
    lib.lcirc_host_gated_residual_fwd.argtypes = [P, P, P, P, I64, I64, I64]
    lib.lcirc_host_gated_residual_bwd.argtypes = [P, P, P, P, P, P, I64, I64, I64]
    lib.lcirc_host_gate_workspace_numel.argtypes = [I64, I64]
    lib.lcirc_host_gate_workspace_numel.restype = I64
    return lib


def _inputs(rows, cols, gate_numel, dtype):
    """fp32 tensors holding values exactly representable in `dtype` (what the kernel loads)."""
    mk = lambda: torch.randn(rows, cols).to(dtype).float().contiguous()  # noqa: E731
    gate = (torch.randn(gate_numel) * 0.8).contiguous()
    return mk(), mk(), gate


@pytest.mark.parametrize("gate_numel", ["scalar", "channel"])
@pytest.mark.parametrize("rows, cols", [(1, 5), (64, 33), (150, 40)])
def test_gated_residual_forward(ref, rows, cols, gate_numel):
    g_n = 1 if gate_numel == "scalar" else cols
    x, o, gate = _inputs(rows, cols, g_n, torch.bfloat16)
    y = torch.full_like(x, float("nan"))
    assert ref.lcirc_host_gated_residual_fwd(_ptr(x), _ptr(o), _ptr(gate), _ptr(y), rows, cols, g_n) == 0
    expect = x.double() + torch.tanh(gate.double()) * o.double()
    torch.testing.assert_close(y.double(), expect, rtol=2e-7, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gate_numel", ["scalar", "channel"])
@pytest.mark.parametrize("rows, cols", [(1, 5), (64, 33), (150, 40), (700, 3)])
def test_gated_residual_backward_matches_autograd(ref, rows, cols, gate_numel, dtype):
    g_n = 1 if gate_numel == "scalar" else cols
    dy, o, gate = _inputs(rows, cols, g_n, dtype)
    chunks = ref.lcirc_host_gate_workspace_numel(rows, cols) // cols
    assert chunks == -(-rows // 64)
    d_o = torch.full_like(dy, float("nan"))
    d_gate = torch.full((g_n,), float("nan"))
    partial = torch.full((chunks, cols), float("nan"))
    rc = ref.lcirc_host_gated_residual_bwd(_ptr(dy), _ptr(o), _ptr(gate), _ptr(d_o), _ptr(d_gate),
                                           _ptr(partial), rows, cols, g_n)
    assert rc == 0

    # Autograd of y = x + tanh(g) * o in fp64.
    x64 = torch.zeros(rows, cols, dtype=torch.float64, requires_grad=True)
    o64 = o.double().requires_grad_()
    g64 = gate.double().requires_grad_()
    g_b = g64 if g_n == cols else g64[0]
    (x64 + torch.tanh(g_b) * o64).backward(dy.double())
    assert torch.equal(x64.grad, dy.double())  # dx = dy: the kernel leaves it to the caller
    # d_o is one fp32 product tanh(g) * dy (host tanhf and torch.tanh may differ by an ulp).
    t = torch.tanh(gate) if g_n == cols else torch.tanh(gate[0])
    torch.testing.assert_close(d_o, (t * dy), rtol=3e-7, atol=0)
    torch.testing.assert_close(d_o.double(), o64.grad, rtol=3e-7, atol=1e-7)
    torch.testing.assert_close(d_gate.double(), g64.grad, rtol=2e-5, atol=1e-5)
    # Stage 1 holds the per-64-row-chunk column sums of dy * o.
    prod = torch.nn.functional.pad(dy.double() * o.double(), (0, 0, 0, chunks * 64 - rows))
    torch.testing.assert_close(partial.double(), prod.view(chunks, 64, cols).sum(1),
                               rtol=1e-5, atol=1e-5)


def test_gate_gradient_reduction_order_is_fixed(ref):
    """Same data, permuted rows: d_o follows the permutation, d_gate is reduced in a fixed order
    (equal up to rounding); repeating the call is bitwise identical."""
    rows, cols = 300, 17
    dy, o, gate = _inputs(rows, cols, 1, torch.float32)

    def run(a, b):
        d_o, d_g = torch.empty_like(a), torch.empty(1)
        ref.lcirc_host_gated_residual_bwd(_ptr(a), _ptr(b), _ptr(gate), _ptr(d_o), _ptr(d_g),
                                          None, rows, cols, 1)
        return d_o, d_g

    d_o1, d_g1 = run(dy, o)
    d_o2, d_g2 = run(dy, o)
    assert torch.equal(d_o1, d_o2) and torch.equal(d_g1, d_g2)
    perm = torch.randperm(rows)
    d_o3, d_g3 = run(dy[perm].contiguous(), o[perm].contiguous())
    assert torch.equal(d_o3, d_o1[perm])
    torch.testing.assert_close(d_g3, d_g1, rtol=1e-5, atol=1e-6)


def test_host_reference_rejects_bad_arguments(ref):
    a = torch.zeros(4, 8)
    g = torch.zeros(3)
    assert ref.lcirc_host_gated_residual_fwd(_ptr(a), _ptr(a), _ptr(g), _ptr(a), 4, 8, 3) == -1
    assert ref.lcirc_host_gated_residual_fwd(_ptr(a), _ptr(a), _ptr(g), _ptr(a), -1, 8, 1) == -1
    assert ref.lcirc_host_gated_residual_bwd(_ptr(a), _ptr(a), _ptr(g), _ptr(a), _ptr(g), None,
                                             4, 8, 3) == -1


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_builds_the_host_reference_without_cuda(tmp_path):
    b = tmp_path / "b"
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(b), "-DLCIRC_WITH_CUDA=OFF",
                    "-DLCIRC_WITH_TORCH=OFF", "-DLCIRC_HOST_REFERENCE=ON"],
                   check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(b)], check=True, capture_output=True)
    lib = ctypes.CDLL(str(b / "liblcirc_host_reference.so"))
    lib.lcirc_host_gate_workspace_numel.restype = I64
    lib.lcirc_host_gate_workspace_numel.argtypes = [I64, I64]
    assert lib.lcirc_host_gate_workspace_numel(129, 10) == 30


# ---- csrc/check_ext.py (the GPU script) --------------------------------------------------------

def _load_check_ext():
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("lcirc_check_ext", CSRC / "check_ext.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_check_ext_is_import_safe_and_needs_cuda(tmp_path):
    ce = _load_check_ext()
    if torch.cuda.is_available():
        pytest.skip("on a CUDA machine main() builds the extension")
    assert ce.main(["--out", str(tmp_path / "r.json"), "--skip-bench"]) == 2
    assert not (tmp_path / "r.json").exists()


def test_check_ext_torch_references_agree_with_host_reference(ref):
    ce = _load_check_ext()
    rows, cols = 70, 12
    for g_n in (1, cols):
        x, o, gate = _inputs(rows, cols, g_n, torch.float32)
        y = torch.empty_like(x)
        ref.lcirc_host_gated_residual_fwd(_ptr(x), _ptr(o), _ptr(gate), _ptr(y), rows, cols, g_n)
        torch.testing.assert_close(ce.gated_residual_reference(x, o, gate), y, rtol=1e-6, atol=1e-6)
        d_o, d_g = torch.empty_like(x), torch.empty(g_n)
        ref.lcirc_host_gated_residual_bwd(_ptr(x), _ptr(o), _ptr(gate), _ptr(d_o), _ptr(d_g), None,
                                          rows, cols, g_n)
        r_o, r_g = ce.gated_residual_backward_reference(x, o, gate)
        assert r_g.shape == gate.shape and r_o.dtype == x.dtype
        torch.testing.assert_close(r_o, d_o, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(r_g, d_g, rtol=1e-5, atol=1e-5)
