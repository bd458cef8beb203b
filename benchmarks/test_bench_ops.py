"""Ops: cross-attention, gated residual and LayerNorm at compressor / GCA shapes."""
import pytest
import torch

from lcirc_fast.ops.registry import bind

OPS = bind("torch")

D, H, DH = 576, 9, 64


@pytest.mark.parametrize("lq,lk", [(8, 256), (512, 64), (1, 512)],
                         ids=["perceiver", "gca-prefill", "gca-decode"])
def test_cross_attention(benchmark, lq, lk):
    q, k, v = (torch.randn(1, n, H, DH) for n in (lq, lk, lk))
    out = benchmark(OPS.cross_attention, q, k, v)
    assert out.shape == (1, lq, H, DH)


def test_gated_residual(benchmark):
    x, b = torch.randn(1, 512, D), torch.randn(1, 512, D)
    out = benchmark(OPS.gated_residual, x, b, torch.tensor(0.5))
    assert out.shape == x.shape


def test_layer_norm_with_add(benchmark):
    x, pos = torch.randn(1, 256, D), torch.randn(256, D)
    out = benchmark(OPS.layer_norm, x, torch.ones(D), torch.zeros(D), 1e-5, pos)
    assert out.shape == x.shape
