"""torch.compile(fullgraph=True) of the compressor step and a GCA block: no graph breaks.

The torch backend traces plain torch ops; the triton backend's kernels are torch custom ops
(opaque to dynamo, fake implementations for tracing, registered autograd), so both compile to one
graph, forward and backward. tests/conftest.py sets TRITON_INTERPRET=1 (kernels on the CPU).
"""
import pytest
import torch

from lcirc_fast.modules import GatedCrossAttentionBlock, PerceiverCompressor, bind_ops
from lcirc_fast.ops.registry import bind

BACKENDS = ["torch", "triton"]
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compressor(backend):
    comp = PerceiverCompressor(dim=32, num_layers=2, heads=2, head_dim=8, ffn=64, max_segment_len=16)
    bind_ops(comp, bind(backend))
    return comp


def _grads(out, params):
    return torch.autograd.grad(out.square().sum(), params)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compressor_step_fullgraph(backend):
    comp = _compressor(backend)
    state = torch.randn(2, 4, 32, requires_grad=True)
    kvs = [(k.detach().requires_grad_(), v.detach()) for k, v in comp.segment_kv(torch.randn(2, 11, 32))]
    params = [state, kvs[0][0], comp.layers[1].attn.to_q.weight, comp.norm.weight]
    ref = comp.step(state, kvs)
    step = torch.compile(comp.step, fullgraph=True, backend="aot_eager")
    out = step(state, kvs)
    torch.testing.assert_close(out, ref, **TOL)
    for g, r in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(g, r, **TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compressor_forward_fullgraph(backend):
    """segment_kv (LayerNorm with the position add, folded K/V product) + step in one graph."""
    comp = _compressor(backend)
    state, embeds = torch.randn(1, 4, 32), torch.randn(1, 9, 32)
    params = [comp.pos_emb, comp.layers[0].attn.to_kv.weight, comp.layers[0].attn.norm_x.weight]
    ref = comp(state, embeds)
    out = torch.compile(comp, fullgraph=True, backend="aot_eager")(state, embeds)
    torch.testing.assert_close(out, ref, **TOL)
    for g, r in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(g, r, **TOL)


def _block(backend):
    blk = GatedCrossAttentionBlock(dim=32, heads=2, head_dim=8, ffn=64)
    with torch.no_grad():                      # non-zero gates: every branch gets a gradient
        blk.attn_gate.fill_(0.5)
        blk.ff_gate.fill_(-0.3)
    bind_ops(blk, bind(backend))
    return blk


# inductor only with the triton backend (custom ops stay opaque); on the torch backend it spends
# a minute in CPU code generation while aot_eager already checks the tracing.
@pytest.mark.parametrize("backend,compiler", [("torch", "aot_eager"), ("triton", "aot_eager"),
                                              ("triton", "inductor")])
def test_gca_block_forward_backward_fullgraph(backend, compiler):
    blk = _block(backend)
    x, memory = torch.randn(2, 5, 32, requires_grad=True), torch.randn(2, 7, 32)
    lengths = torch.tensor([7, 3])
    params = [x, blk.attn_gate, blk.ff_gate, blk.attn.to_q.weight, blk.attn.to_kv.weight, blk.ff.norm.weight]

    def run(x, memory, lengths):
        k, v = blk.project_memory(memory)
        return blk(x, k, v, kv_lengths=lengths)

    ref = run(x, memory, lengths)
    out = torch.compile(run, fullgraph=True, backend=compiler)(x, memory, lengths)
    torch.testing.assert_close(out, ref, **TOL)
    ref_grads = _grads(ref, params)
    for g, r in zip(_grads(out, params), ref_grads):
        torch.testing.assert_close(g, r, **TOL)
    assert all(g.abs().sum() > 0 for g in ref_grads[1:3])    # both gates
