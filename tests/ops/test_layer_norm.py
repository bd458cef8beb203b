"""Triton LayerNorm(x + add) vs naive_layer_norm (interpreter tier)."""
import pytest
import torch
from ops_oracle import assert_close_ratio, leaf, max_err, ref_dtype

from lcirc_fast.ops.layernorm import layer_norm, naive_layer_norm
from lcirc_fast.ops.registry import bind
from lcirc_fast.ops.utils.runtime import LAUNCHES

pytestmark = pytest.mark.interpreter


def _run(fn, x, w, b, add, dout, eps=1e-5):
    ins = [t for t in (x, w, b, add) if t is not None]
    out = fn(x, w, b, eps, add)
    grads = torch.autograd.grad(out, ins, dout)
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,add_shape", [((3, 7, 40), (7, 40)), ((2, 5, 33), None), ((1, 1, 48), (1, 48))])
def test_matches_naive(shape, add_shape, dtype):
    d = shape[-1]
    x = torch.randn(shape, dtype=dtype)
    w = 1.0 + 0.5 * torch.randn(d, dtype=dtype)
    b = 0.5 * torch.randn(d, dtype=dtype)
    add = torch.randn(add_shape, dtype=dtype) if add_shape else None
    dout = torch.randn(shape, dtype=dtype)
    rd = ref_dtype(dtype)

    def leaves(dt):
        return [leaf(t, dt) if t is not None else None for t in (x, w, b, add)]

    out, grads = _run(layer_norm, *leaves(dtype), dout)
    ref, rgrads = _run(naive_layer_norm, *leaves(rd), dout.to(rd))
    tout, tgrads = _run(naive_layer_norm, *leaves(dtype), dout)
    assert_close_ratio("y", out, ref, tout, dtype)
    names = ["dx", "dweight", "dbias", "dadd"]
    for name, g, rg, tg in zip(names, grads, rgrads, tgrads):
        assert g.dtype == dtype and g.shape == rg.shape, name
        # Column sums (dweight, dbias, dadd) are fp32 reductions in the kernel and in torch.
        assert_close_ratio(name, g, rg, tg, dtype, factor=3.0)


def test_parameter_grads_fp32_and_dadd_summed_over_batch():
    x = torch.randn(4, 6, 24)
    w, b, add = leaf(torch.randn(24)), leaf(torch.randn(24)), leaf(torch.randn(6, 24))
    xs = leaf(x)
    layer_norm(xs, w, b, 1e-5, add).square().sum().backward()
    xr, wr, br, ar = leaf(x), leaf(w), leaf(b), leaf(add)
    naive_layer_norm(xr, wr, br, 1e-5, ar).square().sum().backward()
    for g, r in ((xs.grad, xr.grad), (w.grad, wr.grad), (b.grad, br.grad), (add.grad, ar.grad)):
        assert max_err(g, r) < 1e-4 * max(1.0, r.abs().max().item())
    assert w.grad.abs().max() > 0 and b.grad.abs().max() > 0


def test_gradcheck_fp64():
    x = leaf(torch.randn(3, 4, 10, dtype=torch.float64))
    w, b = leaf(torch.randn(10, dtype=torch.float64)), leaf(torch.randn(10, dtype=torch.float64))
    add = leaf(torch.randn(4, 10, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda *t: layer_norm(t[0], t[1], t[2], 1e-5, t[3]),
                                    (x, w, b, add), eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("with_w,with_b", [(False, False), (True, False)])
def test_optional_affine_and_broadcast_add(with_w, with_b):
    x = leaf(torch.randn(4, 3, 16))
    w = leaf(torch.randn(16)) if with_w else None
    b = leaf(torch.randn(16)) if with_b else None
    add = leaf(torch.randn(4, 1, 16))  # not a trailing suffix: broadcast then reduced by autograd
    out = layer_norm(x, w, b, 1e-5, add)
    ref = naive_layer_norm(x, w, b, 1e-5, add)
    assert max_err(out, ref) < 1e-5
    ins = [t for t in (x, w, add) if t is not None]
    g = torch.autograd.grad(out.sum() + (out * ref.detach()).sum(), ins)
    r = torch.autograd.grad(ref.sum() + (ref * ref.detach()).sum(), ins)
    for a, c in zip(g, r):
        assert max_err(a, c) < 1e-4


def test_needs_input_grad_and_no_grad():
    x = torch.randn(2, 5, 8)
    w = leaf(torch.randn(8))
    LAUNCHES.clear()
    layer_norm(x, w, None, 1e-5, None).sum().backward()
    assert LAUNCHES["ln_bwd"] == 1 and LAUNCHES["ln_col_sum"] == 2 and w.grad is not None
    LAUNCHES.clear()
    xs = leaf(x)
    layer_norm(xs, w.detach(), None, 1e-5, None).sum().backward()
    assert LAUNCHES["ln_col_sum"] == 0 and xs.grad is not None
    with torch.no_grad():
        assert layer_norm(xs, w, None, 1e-5, None).grad_fn is None


def test_deterministic_param_grads():
    x, add, dout = torch.randn(6, 9, 32), torch.randn(9, 32), torch.randn(6, 9, 32)
    runs = []
    for _ in range(2):
        w, b, a = leaf(torch.ones(32)), leaf(torch.zeros(32)), leaf(add)
        runs.append(torch.autograd.grad(layer_norm(x, w, b, 1e-5, a), (w, b, a), dout))
    for p, q in zip(*runs):
        assert torch.equal(p, q)


def test_registry_and_errors():
    x, w = torch.randn(2, 8), torch.randn(8)
    assert max_err(bind("triton").layer_norm(x, w, None), naive_layer_norm(x, w, None)) < 1e-5
    with pytest.raises(ValueError, match="weight must have shape"):
        layer_norm(x, torch.randn(7), None)
    with pytest.raises(ValueError, match="does not broadcast"):
        layer_norm(x, None, None, 1e-5, torch.randn(3, 8))
