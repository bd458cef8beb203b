"""`few_row_linear` and `FewRowLinear`: ``F.linear``'s products for up to FEW_ROWS rows as a
batched product over row blocks of the weight; everything else exactly ``F.linear``."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lcirc_fast.ops import cpu_gemm
from lcirc_fast.ops.cpu_gemm import FEW_ROWS, few_row_blocks, few_row_linear

needs_mkl = pytest.mark.skipif(not cpu_gemm.mkl_packing_available(),
                               reason="this torch build has no MKL")


@needs_mkl
@pytest.mark.parametrize("lead", [(1,), (3,), (1, 1), (2, 5), (FEW_ROWS,)])
@pytest.mark.parametrize("out_features", [96, 50, 64 * 49])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_f_linear(lead, out_features, bias):
    g = torch.Generator().manual_seed(out_features + len(lead))
    x = torch.randn(*lead, 72, generator=g)
    w = torch.randn(out_features, 72, generator=g)
    b = torch.randn(out_features, generator=g) if bias else None
    assert few_row_blocks(out_features) == (4 if out_features % 4 == 0 else 2)
    y = few_row_linear(x, w, b)
    ref = F.linear(x.double(), w.double(), None if b is None else b.double()).float()
    assert y.shape == (*lead, out_features) and y.dtype == torch.float32 and y.is_contiguous()
    # within twice the error of torch's own fp32 product against fp64
    torch_err = (F.linear(x, w, b) - ref).abs().max().item()
    assert (y - ref).abs().max().item() <= 2 * torch_err + 1e-6


@pytest.mark.parametrize("case", ["many_rows", "odd_rows", "grad", "bf16", "strided", "empty"])
def test_other_calls_are_f_linear_bit_for_bit(case):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(FEW_ROWS + 1 if case == "many_rows" else 2, 40, generator=g)
    w = torch.randn(48 if case != "odd_rows" else 47, 40, generator=g)
    if case == "grad":
        w.requires_grad_(True)
    if case == "bf16":
        x, w = x.bfloat16(), w.bfloat16()
    if case == "strided":
        w = torch.randn(40, 48, generator=g).t()
    if case == "empty":
        x = x[:0]
    y = few_row_linear(x, w, None)
    assert torch.equal(y, F.linear(x, w))
    if case == "grad":
        y.sum().backward()
        assert w.grad is not None and torch.equal(w.grad, x.sum(0).expand_as(w))


@needs_mkl
def test_module_swap_keeps_parameters_and_outputs():
    from lcirc_fast.modules.linear import FewRowLinear

    lin = nn.Linear(32, 64)
    x = torch.randn(1, 32)
    with torch.no_grad():
        ref = lin(x)
        weight, keys = lin.weight, set(lin.state_dict())
        lin.__class__ = FewRowLinear
        torch.testing.assert_close(lin(x), ref, rtol=1e-5, atol=1e-6)
    assert lin.weight is weight and set(lin.state_dict()) == keys
    lin(torch.randn(3, 32, requires_grad=True)).sum().backward()     # training still works
    assert lin.weight.grad is not None
