"""Ahead-of-time compile check for sm_90 / sm_80 without a GPU, plus the folded launch grid.

The compile runs in a subprocess with TRITON_INTERPRET unset (this session sets it before import):
`tools/aot_compile.py` runs the host wrappers on CPU tensors, intercepts each launch and
compiles every autotune config the GPU path can pick. The default run covers every kernel at the
paper's shape (bf16, D=128, sm_90) plus one fp32 and one sm_80 case; ``-m aot_full`` compiles the
whole matrix (bf16/fp16/fp32/fp32-ieee, D 64 and 128, sm_90 and sm_80).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import aot_compile as aot
import pytest
import torch
from ops_oracle import leaf, max_err

from lcirc_fast.ops.cross_attn import cross_attention, cross_attention_varlen, naive_cross_attention
from lcirc_fast.ops.cross_attn import function as attn_fn
from lcirc_fast.ops.cross_attn import kernels as attn_k

TOOLS = Path(__file__).resolve().parents[2] / "tools"

ATTN_KERNELS = {"_fwd_kernel", "_fwd_combine_kernel", "_bwd_preprocess_kernel", "_bwd_dkdv_kernel",
                "_bwd_dq_kernel", "_dq_reduce_kernel"}
ELEM_KERNELS = {"_gated_fwd_kernel", "_gated_bwd_kernel", "_gate_grad_kernel", "_ln_fwd_kernel",
                "_ln_bwd_kernel", "_col_sum_kernel"}
KIND = {"_fwd_kernel": "fwd", "_bwd_dkdv_kernel": "dkdv", "_bwd_dq_kernel": "dq"}


def run_tool(tmp_path, *args, timeout=3000):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, str(TOOLS / "aot_compile.py"), "--quiet", "--json", str(out), *args],
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert out.exists(), proc.stderr[-4000:]
    return json.loads(out.read_text())


def check_rows(rows):
    """Assertions shared by the default and the full run."""
    bad = aot.problems(rows, margin=True)
    assert not bad, "\n".join(bad)
    for r in rows:
        mode = r["flags"].get("PREC")
        if r["kernel"] in KIND:
            expect = attn_k.gpu_configs(KIND[r["kernel"]], attn_k.dot_mode(r["flags"]["UPCAST"], mode),
                                        r["flags"]["BLOCK_D"], r["arch"])
            assert tuple(r["config"]) in expect, r
            # 16-bit and tf32 dots run on tensor cores; only the opt-in IEEE path uses FMA units.
            tensor_cores = r["wgmma"] + r["mma"]
            if r["dtype"] == "fp32-ieee":
                assert tensor_cores == 0, r
            else:
                assert tensor_cores > 0, r
        if r["kernel"] in ("_gated_fwd_kernel", "_gated_bwd_kernel"):
            # 16-byte vector loads (8 x 16-bit or 4 x fp32); only the gate itself is a scalar load.
            assert r["ld_v4"] > 0 and r["ld_scalar"] <= 1, r


def check_coverage(rows, dtype, D, arch):
    """Every kernel, and for the autotuned ones every config the GPU pruning keeps, was compiled."""
    sel = [r for r in rows if r["dtype"] == dtype and r["D"] in (D, 0) and r["arch"] == arch]
    # Kernels without dots compile once for fp32 and its IEEE option (the variants are identical).
    same = ("fp32", "fp32-ieee") if dtype.startswith("fp32") else (dtype,)
    shared = [r for r in rows if r["dtype"] in same and r["D"] in (D, 0) and r["arch"] == arch]
    assert {r["kernel"] for r in shared} >= ATTN_KERNELS
    mode = attn_k.dot_mode(dtype != "bf16" and dtype != "fp16", "ieee" if dtype == "fp32-ieee" else "tf32")
    for kernel, kind in KIND.items():
        got = {tuple(r["config"]) for r in sel if r["kernel"] == kernel}
        assert got == set(attn_k.gpu_configs(kind, mode, D, arch)), (kernel, got)


@pytest.fixture(scope="module")
def default_rows(tmp_path_factory):
    return run_tool(tmp_path_factory.mktemp("aot"), "--subset", "default")


def test_default_subset_compiles_without_spills(default_rows):
    check_rows(default_rows)
    assert {r["kernel"] for r in default_rows} == ATTN_KERNELS | ELEM_KERNELS
    assert {(r["dtype"], r["arch"]) for r in default_rows} >= {("bf16", 90), ("fp32", 90), ("bf16", 80)}


def test_default_subset_covers_every_gpu_config(default_rows):
    check_coverage(default_rows, "bf16", 128, 90)
    # dK/dV both with the atomic dQ (non-deterministic) and without it.
    dkdv = {r["flags"]["ATOMIC_DQ"] for r in default_rows if r["kernel"] == "_bwd_dkdv_kernel" and r["arch"] == 90
            and r["dtype"] == "bf16"}
    assert dkdv == {True, False}
    # Split-KV and single-pass forward / dQ (Perceiver's 64 queries, GCA's 4096).
    for kernel in ("_fwd_kernel", "_bwd_dq_kernel"):
        splits = {r["flags"]["NSPLIT"] > 1 for r in default_rows if r["kernel"] == kernel and r["dtype"] == "bf16"}
        assert splits == {True, False}


def test_fp32_defaults_to_tf32_tensor_cores(default_rows):
    fp32 = [r for r in default_rows if r["dtype"] == "fp32" and r["kernel"] in KIND]
    assert fp32 and all(r["flags"]["PREC"] == "tf32" and r["wgmma"] + r["mma"] > 0 for r in fp32)


@pytest.mark.aot_full
def test_full_matrix(tmp_path):
    rows = run_tool(tmp_path, "--subset", "full", "--arch", "90", "--arch", "80")
    check_rows(rows)
    for arch in (90, 80):
        for dtype in aot.ATTN_DTYPES:
            for D in aot.HEAD_DIMS:
                check_coverage(rows, dtype, D, arch)
        # The fp32 reductions (_gate_grad_kernel, _col_sum_kernel) compile once per arch.
        assert {r["kernel"] for r in rows if r["arch"] == arch and r["D"] == 0} == ELEM_KERNELS
        for dtype in aot.ELEM_DTYPES:
            got = {r["kernel"] for r in rows if r["arch"] == arch and r["dtype"] == dtype and r["D"] == 0}
            assert got >= {"_gated_fwd_kernel", "_gated_bwd_kernel", "_ln_fwd_kernel", "_ln_bwd_kernel"}


def test_grid_is_legal_for_batch_4096_x_32_heads(tmp_path):
    """B*H = 131,072 programs per block column: all of them fold into grid axis 0 (launch not run)."""
    rows = run_tool(tmp_path, "--launches-only", "--scenario", "grid_4096x32", "--dtype", "bf16", "--dim", "64")
    assert not aot.grid_problems(rows)
    by_kernel = {r["kernel"]: r for r in rows}
    assert set(by_kernel) == {"_fwd_kernel", "_bwd_preprocess_kernel", "_bwd_dkdv_kernel", "_dq_reduce_kernel"}
    for r in rows:
        for x, y, z in r["grids"]:
            assert x % (4096 * 32) == 0 and y == 1 and z == 1


def test_ptxas_log_and_ptx_parsing():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
           "ptxas info    : Function properties for k\n"
           "    8 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 16 bytes cmem[0]\n")
    assert aot.parse_ptxas_log(log) == dict(regs=255, stack=8, spill_stores=8, spill_loads=4)
    with pytest.raises(ValueError):
        aot.parse_ptxas_log("nothing")
    ptx = ("\t@%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];\n"
           "\tld.global.b16 %rs1, [ %rd2 + 0 ];\n"
           "\tmma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {...};\n"
           "\twgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {...};\n")
    c = aot.ptx_counts(ptx)
    assert (c["ld_v4"], c["ld_scalar"], c["mma"], c["wgmma"]) == (1, 1, 1, 1)
    row = dict(kernel="k", dtype="bf16", D=128, arch=80, config=[1, 1, 1, 1], flags={}, ok=True,
               regs=200, spill_stores=0, spill_loads=0, shared=160_000)
    assert aot.problems([row]) == [] and len(aot.problems([row], margin=True)) == 1
    assert len(aot.problems([dict(row, spill_stores=4)])) == 1


# ---- interpreter tier: the folded grid indexing and the fp32 precision option -------------------

@pytest.mark.interpreter
@pytest.mark.parametrize("deterministic", [False, True])
def test_folded_grid_indexing_matches_naive(deterministic):
    """Several batches, heads, query blocks and key blocks per program column: every (block, b, h)
    of the folded axis 0 lands on its own tile."""
    B, Lq, Lk, H, D = 3, 70, 150, 5, 16
    q, k, v = (torch.randn(B, L, H, D) for L in (Lq, Lk, Lk))
    lengths = torch.tensor([150, 17, 64])
    qs, ks, vs = leaf(q), leaf(k), leaf(v)
    out = cross_attention(qs, ks, vs, kv_lengths=lengths, deterministic=deterministic, num_splits=2)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (qs, ks, vs), do)
    qr, kr, vr = leaf(q, torch.float64), leaf(k, torch.float64), leaf(v, torch.float64)
    ref = naive_cross_attention(qr, kr, vr, kv_lengths=lengths)
    rgrads = torch.autograd.grad(ref, (qr, kr, vr), do.double())
    assert max_err(out, ref) < 1e-5
    for g, rg in zip(grads, rgrads):
        assert max_err(g, rg) < 1e-5


@pytest.mark.interpreter
def test_folded_grid_indexing_varlen_packed_q():
    H, D = 3, 16
    lens_q, lens_k = [40, 1, 70], [90, 5, 130]
    cu_q = torch.tensor([0, 40, 41, 111], dtype=torch.int32)
    cu_k = torch.tensor([0, 90, 95, 225], dtype=torch.int32)
    q, k, v = torch.randn(111, H, D), torch.randn(225, H, D), torch.randn(225, H, D)
    out = cross_attention_varlen(q, k, v, cu_k, max(lens_k), cu_seqlens_q=cu_q, max_seqlen_q=max(lens_q))
    for b in range(3):
        ref = naive_cross_attention(q[cu_q[b]:cu_q[b + 1]][None], k[cu_k[b]:cu_k[b + 1]][None],
                                    v[cu_k[b]:cu_k[b + 1]][None])[0]
        assert max_err(out[cu_q[b]:cu_q[b + 1]], ref) < 1e-5


@pytest.mark.interpreter
def test_fp32_precision_option(monkeypatch):
    monkeypatch.delenv("TRITON_F32_DEFAULT", raising=False)
    assert attn_fn.resolve_tf32(None) is True and attn_fn.resolve_tf32(False) is False
    monkeypatch.setenv("TRITON_F32_DEFAULT", "ieee")
    assert attn_fn.resolve_tf32(None) is False and attn_fn.resolve_tf32(True) is True
    assert attn_fn._dtype_flags(torch.float32, True)[2] == "tf32"
    assert attn_fn._dtype_flags(torch.float32, False)[2] == "ieee"
    assert attn_fn._dtype_flags(torch.float64, True)[2] == "ieee"
    # The interpreter computes both exactly: the options agree with the fp64 reference.
    q, k, v = (torch.randn(2, L, 2, 32) for L in (7, 40, 40))
    ref = naive_cross_attention(q.double(), k.double(), v.double())
    for allow in (True, False):
        assert max_err(cross_attention(q, k, v, allow_tf32=allow), ref) < 1e-5


@pytest.mark.parametrize("arch", [90, 80])
def test_interpreter_keeps_one_config_and_gpu_pruning_follows_the_table(monkeypatch, arch):
    assert len(attn_k._fwd_kernel.configs) == 1 and len(attn_k._bwd_dkdv_kernel.configs) == 1
    monkeypatch.setattr(attn_k.runtime, "capability", lambda device: arch)
    everything = attn_k._all_configs("dkdv", "dq")
    q = torch.zeros(1)
    for kind in ("dkdv", "dq"):
        prune = attn_k._pruner(kind)["early_config_prune"]
        for upcast, prec, block_d in ((False, "tf32", 64), (False, "tf32", 128), (True, "tf32", 64),
                                      (True, "ieee", 128), (True, "ieee", 256)):
            kept = prune(everything, {"Q": q}, UPCAST=upcast, PREC=prec, BLOCK_D=block_d)
            got = [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages) for c in kept]
            assert got and len(got) < len(everything)
            assert sorted(got) == sorted(attn_k.gpu_configs(kind, attn_k.dot_mode(upcast, prec), block_d, arch))
