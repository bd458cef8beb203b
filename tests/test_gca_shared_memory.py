"""A GCA block reading one memory [1, M, H, Dh] for every row gives what it gives with that
memory repeated per row, masked or not."""
import pytest
import torch

from lcirc_fast.modules import GatedCrossAttentionBlock


@pytest.mark.parametrize("lengths", [None, 5])
def test_shared_memory_equals_repeated(lengths):
    torch.manual_seed(0)
    block = GatedCrossAttentionBlock(32, 4, 8, 64).eval()
    with torch.no_grad():
        block.attn_gate.fill_(0.7)
        block.ff_gate.fill_(0.4)
        x = torch.randn(3, 2, 32)
        k, v = block.project_memory(torch.randn(1, 9, 32))
        kl = None if lengths is None else torch.tensor([lengths])
        shared = block(x, k, v, kv_lengths=kl)
        rep = block(x, k.expand(3, -1, -1, -1), v.expand(3, -1, -1, -1),
                    kv_lengths=None if kl is None else kl.expand(3))
    assert shared.shape == x.shape
    torch.testing.assert_close(shared, rep, rtol=1e-5, atol=1e-6)


def test_shared_memory_with_per_row_lengths():
    torch.manual_seed(1)
    block = GatedCrossAttentionBlock(32, 4, 8, 64).eval()
    with torch.no_grad():
        block.attn_gate.fill_(0.7)
        x = torch.randn(2, 3, 32)
        k, v = block.project_memory(torch.randn(1, 9, 32))
        lengths = torch.tensor([4, 9])
        got = block(x, k, v, kv_lengths=lengths)
        want = torch.cat([block(x[i:i + 1], k[:, :n], v[:, :n]) for i, n in enumerate((4, 9))])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
