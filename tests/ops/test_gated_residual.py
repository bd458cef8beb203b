"""Triton gated residual epilogue vs naive_gated_residual (interpreter tier)."""
import pytest
import torch
from ops_oracle import assert_close_ratio, leaf, max_err, ref_dtype

from lcirc_fast.ops.registry import bind
from lcirc_fast.ops.tanh_gate import gated_residual, naive_gated_residual
from lcirc_fast.ops.utils.runtime import LAUNCHES

pytestmark = pytest.mark.interpreter


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1,), (3, 7, 33), (2, 1111)])
def test_matches_naive(shape, dtype):
    x, y, dout = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    gate = torch.tensor(0.37)
    xs, ys, gs = leaf(x), leaf(y), leaf(gate)
    out = gated_residual(xs, ys, gs)
    grads = torch.autograd.grad(out, (xs, ys, gs), dout)
    rd = ref_dtype(dtype)
    xr, yr, gr = leaf(x, rd), leaf(y, rd), leaf(gate, torch.float64)
    ref = naive_gated_residual(xr, yr, gr)
    rgrads = torch.autograd.grad(ref, (xr, yr, gr), dout.to(rd))
    xt, yt, gt = leaf(x), leaf(y), leaf(gate)
    tout = naive_gated_residual(xt, yt, gt)
    tgrads = torch.autograd.grad(tout, (xt, yt, gt), dout)
    assert out.dtype == dtype
    assert_close_ratio("y", out, ref, tout, dtype)
    for name, g, rg, tg in zip(("dx", "dbranch"), grads, rgrads, tgrads):
        assert_close_ratio(name, g, rg, tg, dtype, factor=3.0)
    # d(gate) is an fp32 reduction: within fp32 rounding of the fp64 reference.
    assert grads[2].dtype == torch.float32 and grads[2].shape == ()
    assert max_err(grads[2], rgrads[2]) <= 1e-5 * max(1.0, rgrads[2].abs().item()) + 2 * max_err(tgrads[2], rgrads[2])


def test_zero_gate_is_identity_and_gate_gets_gradient():
    x, y = torch.randn(4, 50, dtype=torch.bfloat16), leaf(torch.randn(4, 50, dtype=torch.bfloat16))
    gate = leaf(torch.tensor(0.0))
    out = gated_residual(x, y, gate)
    assert torch.equal(out, x)
    out.float().sum().backward()
    assert torch.all(y.grad == 0)
    assert torch.allclose(gate.grad, y.detach().float().sum(), rtol=1e-5)


def test_gradcheck_fp64():
    x, y = leaf(torch.randn(2, 5, dtype=torch.float64)), leaf(torch.randn(2, 5, dtype=torch.float64))
    gate = leaf(torch.tensor(-0.8, dtype=torch.float64))
    assert torch.autograd.gradcheck(gated_residual, (x, y, gate), eps=1e-6, atol=1e-8)


def test_needs_input_grad():
    x, y = torch.randn(2, 40), leaf(torch.randn(2, 40))
    gate = torch.tensor(0.5)
    LAUNCHES.clear()
    gated_residual(x, y, gate).sum().backward()
    assert LAUNCHES["gated_bwd"] == 1 and LAUNCHES["gate_grad"] == 0
    assert torch.allclose(y.grad, torch.full_like(y, torch.tanh(gate).item()))
    LAUNCHES.clear()
    xs = leaf(x)
    gated_residual(xs, y.detach(), gate).sum().backward()
    assert LAUNCHES["gated_bwd"] == 0 and torch.all(xs.grad == 1)
    with torch.no_grad():
        assert gated_residual(xs, y, leaf(gate)).grad_fn is None


def test_deterministic_gate_grad():
    x, y = torch.randn(5, 3000), torch.randn(5, 3000)
    dout = torch.randn(5, 3000)
    grads = []
    for _ in range(2):
        g = leaf(torch.tensor(0.3))
        torch.autograd.grad(gated_residual(x, y, g), g, dout)
        grads.append(torch.autograd.grad(gated_residual(x, y, g), g, dout)[0])
    assert torch.equal(grads[0], grads[1])


def test_registry_and_errors():
    x, y, g = torch.randn(3, 8), torch.randn(3, 8), torch.tensor(1.2)
    assert max_err(bind("triton").gated_residual(x, y, g), naive_gated_residual(x, y, g)) < 1e-6
    with pytest.raises(ValueError, match="shapes differ"):
        gated_residual(x, y[:, :4], g)
    with pytest.raises(ValueError, match="one-element"):
        gated_residual(x, y, torch.ones(2))
