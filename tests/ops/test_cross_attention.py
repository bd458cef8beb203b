"""Triton cross-attention vs the naive reference (interpreter tier)."""
import math

import pytest
import torch
from ops_oracle import assert_close_ratio, leaf, max_err, ref_dtype

from lcirc_fast.ops.cross_attn import cross_attention, cross_attention_varlen, naive_cross_attention
from lcirc_fast.ops.registry import bind
from lcirc_fast.ops.utils.runtime import LAUNCHES

pytestmark = pytest.mark.interpreter
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _inputs(B, Lq, Lk, H, D, dtype):
    q = torch.randn(B, Lq, H, D, dtype=dtype)
    k = torch.randn(B, Lk, H, D, dtype=dtype)
    v = torch.randn(B, Lk, H, D, dtype=dtype)
    return q, k, v


def _check_against_naive(q, k, v, kv_lengths=None, num_splits=None, deterministic=False):
    """Forward and all three input grads under the error-ratio oracle (3x for grads)."""
    dtype = q.dtype
    rd = ref_dtype(dtype)
    do = torch.randn(q.shape, dtype=dtype)
    qs, ks, vs = leaf(q), leaf(k), leaf(v)
    out = cross_attention(qs, ks, vs, kv_lengths=kv_lengths, num_splits=num_splits,
                          deterministic=deterministic)
    grads = torch.autograd.grad(out, (qs, ks, vs), do)
    qr, kr, vr = leaf(q, rd), leaf(k, rd), leaf(v, rd)
    ref = naive_cross_attention(qr, kr, vr, kv_lengths=kv_lengths)
    rgrads = torch.autograd.grad(ref, (qr, kr, vr), do.to(rd))
    qt, kt, vt = leaf(q), leaf(k), leaf(v)
    tout = bind("torch").cross_attention(qt, kt, vt, kv_lengths=kv_lengths)
    tgrads = torch.autograd.grad(tout, (qt, kt, vt), do)
    errs = [assert_close_ratio("o", out, ref, tout, dtype)]
    for name, g, rg, tg in zip(("dq", "dk", "dv"), grads, rgrads, tgrads):
        assert g.dtype == dtype and g.shape == rg.shape
        errs.append(assert_close_ratio(name, g, rg, tg, dtype, factor=3.0))
    return errs


# Every (Lq, Lk) of {1, 7, 64} x {1, 33, 111} in fp32; fp16/bf16 on the shapes with tails.
_GRID = ([(lq, lk, torch.float32) for lq in (1, 7, 64) for lk in (1, 33, 111)]
         + [(lq, lk, dt) for dt in (torch.float16, torch.bfloat16) for lq, lk in ((1, 111), (7, 33), (64, 111))])


@pytest.mark.parametrize("Lq,Lk,dtype", _GRID, ids=lambda x: str(x).replace("torch.", ""))
def test_matches_naive(Lq, Lk, dtype):
    q, k, v = _inputs(2, Lq, Lk, 1, 32, dtype)
    _check_against_naive(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kv_lengths_masking(dtype):
    q, k, v = _inputs(3, 7, 111, 1, 32, dtype)
    lengths = torch.tensor([111, 1, 64])
    _check_against_naive(q, k, v, kv_lengths=lengths)
    if dtype != torch.float32:
        return
    # Padded keys get exactly zero gradient and do not influence the output.
    ks, vs = leaf(k), leaf(v)
    out = cross_attention(q, ks, vs, kv_lengths=lengths)
    out.float().sum().backward()
    assert torch.all(ks.grad[1, 1:] == 0) and torch.all(vs.grad[2, 64:] == 0)
    k2 = k.clone()
    k2[1, 1:] = 1e4
    assert torch.equal(cross_attention(q, k2, v, kv_lengths=lengths), out.detach())


@pytest.mark.parametrize("num_splits", [1, 2, 5])
def test_split_kv_forward(num_splits):
    q, k, v = _inputs(2, 7, 111, 2, 32, torch.float32)
    _check_against_naive(q, k, v, kv_lengths=torch.tensor([111, 50]), num_splits=num_splits)


def test_many_queries_path():
    """More queries than the split threshold: plain forward and the dQ-by-query-block backward."""
    q, k, v = _inputs(1, 300, 40, 1, 16, torch.float32)
    LAUNCHES.clear()
    _check_against_naive(q, k, v)
    assert LAUNCHES["attn_fwd_combine"] == 0 and LAUNCHES["attn_bwd_dq"] == 1


@pytest.mark.parametrize("D", [8, 24, 64, 128, 256])
def test_head_dims(D):
    q, k, v = _inputs(1, 7, 33, 1, D, torch.float32)
    _check_against_naive(q, k, v, num_splits=2)


def test_head_dim_too_large_raises():
    q, k, v = _inputs(1, 2, 3, 1, 320, torch.float32)
    with pytest.raises(NotImplementedError, match="head_dim 320"):
        bind("triton").cross_attention(q, k, v)


def test_bad_shapes_raise():
    q, k, v = _inputs(1, 2, 3, 2, 8, torch.float32)
    with pytest.raises(ValueError, match="k and v"):
        cross_attention(q, k, v[:, :2])
    with pytest.raises(ValueError, match="kv_lengths"):
        cross_attention(q, k, v, kv_lengths=torch.tensor([1, 2]))


def test_registry_triton_matches_torch():
    q, k, v = _inputs(2, 5, 20, 2, 16, torch.float32)
    lengths = torch.tensor([20, 9])
    a = bind("triton").cross_attention(q, k, v, kv_lengths=lengths)
    b = bind("torch").cross_attention(q, k, v, kv_lengths=lengths)
    assert max_err(a, b) < 1e-5


@pytest.mark.parametrize("packed_q", [False, True])
def test_varlen_matches_per_sequence_loop(packed_q):
    H, D = 2, 16
    lens_k, lens_q = [5, 70, 0, 33], [3, 1, 4, 40]
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist())
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    k = leaf(torch.randn(sum(lens_k), H, D))
    v = leaf(torch.randn(sum(lens_k), H, D))
    q = leaf(torch.randn(sum(lens_q), H, D) if packed_q else torch.randn(4, 6, H, D))
    out = cross_attention_varlen(q, k, v, cu_k, max(lens_k), cu_seqlens_q=cu_q if packed_q else None,
                                 max_seqlen_q=max(lens_q) if packed_q else None)
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    refs = []
    for b in range(4):
        qb = q[cu_q[b]:cu_q[b + 1]][None] if packed_q else q[b:b + 1]
        kb, vb = k[cu_k[b]:cu_k[b + 1]][None], v[cu_k[b]:cu_k[b + 1]][None]
        refs.append(naive_cross_attention(qb, kb, vb) if kb.shape[1] else 0 * qb)
    ref = torch.cat([r[0] for r in refs]) if packed_q else torch.cat(refs)
    rgrads = torch.autograd.grad(ref, (q, k, v), do)
    assert max_err(out, ref) < 1e-5
    for g, rg in zip(grads, rgrads):
        assert max_err(g, rg) < 1e-5
    # The sequence without keys gives zeros.
    assert torch.all(out[cu_q[2]:cu_q[3]] == 0) if packed_q else torch.all(out[2] == 0)


def test_gradcheck_fp64():
    q, k, v = (leaf(t) for t in _inputs(2, 3, 6, 1, 8, torch.float64))
    lengths = torch.tensor([6, 4])
    assert torch.autograd.gradcheck(lambda a, b, c: cross_attention(a, b, c, kv_lengths=lengths),
                                    (q, k, v), eps=1e-6, atol=1e-6, fast_mode=True)


def test_gradcheck_fp64_split_and_deterministic():
    q, k, v = (leaf(t) for t in _inputs(1, 2, 40, 1, 8, torch.float64))
    fn = lambda a, b, c: cross_attention(a, b, c, num_splits=3, deterministic=True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-6, fast_mode=True)


def test_needs_input_grad_only_q():
    q, k, v = _inputs(1, 7, 33, 1, 16, torch.float32)
    qs = leaf(q)
    LAUNCHES.clear()
    out = cross_attention(qs, k, v)
    out.sum().backward()  # stride-0 grad_output
    assert LAUNCHES["attn_bwd_dkdv"] == 0 and LAUNCHES["attn_bwd_dq"] == 1
    assert k.grad is None and v.grad is None
    qr = leaf(q)
    naive_cross_attention(qr, k, v).sum().backward()
    assert max_err(qs.grad, qr.grad) < 1e-5


def test_needs_input_grad_only_kv():
    q, k, v = _inputs(1, 7, 33, 1, 16, torch.float32)
    ks, vs = leaf(k), leaf(v)
    LAUNCHES.clear()
    cross_attention(q, ks, vs).sum().backward()
    assert LAUNCHES["attn_bwd_dkdv"] == 1 and LAUNCHES["attn_bwd_dq"] == 0
    assert LAUNCHES["attn_dq_reduce"] == 0
    assert ks.grad is not None and vs.grad is not None


def test_no_grad_forward_saves_nothing():
    q, k, v = (leaf(t) for t in _inputs(1, 7, 33, 1, 16, torch.float32))
    with torch.no_grad():
        out = cross_attention(q, k, v)
    assert out.grad_fn is None
    out = cross_attention(q, k, v)
    saved = out.grad_fn.saved_tensors
    assert len(saved) == 5  # q, k, v, o, lse: never the attention matrix
    lse = saved[-1]
    assert lse.dtype == torch.float32 and lse.shape == (1, 1, 7)
    # lse is the base-2 log-sum-exp of the scaled scores.
    s = torch.einsum("bqhd,bkhd->bhqk", q.detach(), k.detach()) / math.sqrt(16)
    assert max_err(lse, torch.logsumexp(s, -1) * math.log2(math.e)) < 1e-4


@pytest.mark.parametrize("Lq", [7, 300])
def test_deterministic_bitwise(Lq):
    q, k, v = _inputs(2, Lq, 70, 1, 16, torch.float32)
    do = torch.randn(q.shape)
    runs = []
    for _ in range(2):
        LAUNCHES.clear()
        ins = (leaf(q), leaf(k), leaf(v))
        out = cross_attention(*ins, deterministic=True)
        runs.append(torch.autograd.grad(out, ins, do))
        assert LAUNCHES["attn_bwd_dq"] == 1  # dQ without atomics
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_noncontiguous_inputs_in_nan_guard_bands():
    """k, v are strided views of a fused, NaN-padded buffer; out-of-range reads would show as NaN."""
    B, Lq, Lk, H, D = 2, 7, 33, 2, 16
    big = torch.full((B, Lk + 4, 2, H, D + 8), float("nan"))
    big[:, 2:2 + Lk, :, :, :D] = torch.randn(B, Lk, 2, H, D)
    kv = big[:, 2:2 + Lk, :, :, :D]
    k, v = kv.unbind(2)
    q = torch.randn(B, Lq, H, D).transpose(1, 2).contiguous().transpose(1, 2)  # permuted strides
    out = cross_attention(q, k, v)
    ref = naive_cross_attention(q, k, v)
    assert not torch.isnan(out).any() and max_err(out, ref) < 1e-5
