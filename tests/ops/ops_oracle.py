"""Error-ratio oracle shared by the op tests (FlashAttention style).

A kernel passes when  max|kernel - ref| <= factor * max|torch_same_dtype - ref| + atol,
with ref computed in fp32 (fp64 for fp32 inputs).
"""
import torch

ATOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float64: 1e-10}


def ref_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def assert_close_ratio(name, out, ref, torch_out, dtype, factor=2.0):
    """Assert the oracle; returns (kernel error, torch error) for reporting."""
    assert not torch.isnan(out).any(), f"{name}: NaN in kernel output"
    err, terr = max_err(out, ref), max_err(torch_out, ref)
    bound = factor * terr + ATOL[dtype]
    assert err <= bound, f"{name}: kernel err {err:.3e} > {factor} x torch err {terr:.3e} + atol {ATOL[dtype]}"
    return err, terr


def leaf(t: torch.Tensor, dtype=None) -> torch.Tensor:
    return t.detach().to(dtype or t.dtype).requires_grad_(True)
