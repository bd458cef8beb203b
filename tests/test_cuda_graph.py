"""Step-graph cache policy: keys, replay bookkeeping, invalidation, bypasses (CPU).

The real capture needs a GPU; here `EagerCapture` stands in for it (replay re-runs the step on
the static buffers), and the default CUDA capturer is checked to be bypassed on CPU.
"""
import pytest
import torch
from lcirc_testutils import tiny_lcirc

from lcirc_fast import bptt
from lcirc_fast.models import cuda_graph

SEG = 8


def _compress(model, ids, **kw):
    with torch.no_grad():
        return model.compress(ids, segment_len=SEG, **kw).hidden


@pytest.fixture
def model():
    m = tiny_lcirc()
    yield m
    cuda_graph.clear(m)


def test_off_by_default_and_flag_must_be_bool(model):
    ids = torch.randint(0, 256, (1, 3 * SEG))
    _compress(model, ids)
    assert cuda_graph.stats(model) == {}                      # never consulted when off
    with pytest.raises(ValueError, match="cuda_graphs = 'yes': must be true or false"):
        model.configure(cuda_graphs="yes")
    assert model.config.cuda_graphs is False


def test_cuda_capturer_is_bypassed_on_cpu(model):
    ids = torch.randint(0, 256, (2, 3 * SEG + 3))
    ref = _compress(model, ids)
    model.configure(cuda_graphs=True)
    got = _compress(model, ids)
    st = cuda_graph.stats(model)
    assert st["bypass:device-cpu"] == 4 and st["capture"] == 0 and st["replay"] == 0
    assert torch.equal(got, ref)


def test_keys_replays_and_equality_with_eager(model):
    ids = torch.randint(0, 256, (2, 4 * SEG + 5))             # 4 segments of 8, then one of 5
    ref = _compress(model, ids)
    cap = cuda_graph.EagerCapture()
    cache = cuda_graph.graph_cache(model, capturer=cap)
    model.configure(cuda_graphs=True)
    got = _compress(model, ids)
    assert torch.equal(got, ref)
    assert cache.stats["capture"] == 2 and cache.stats["replay"] == 5
    keys = set(cache.graphs)
    assert {(k.batch, k.seg_len, k.dtype, k.backend) for k in keys} == {
        (2, SEG, torch.float32, "torch"), (2, 5, torch.float32, "torch")}
    # same shapes again: replay only; a new batch size is a new key
    assert torch.equal(_compress(model, ids), ref)
    assert cache.stats["capture"] == 2 and cache.stats["replay"] == 10
    one = _compress(model, ids[:1])
    assert torch.equal(one, ref[:1]) or torch.allclose(one, ref[:1], atol=1e-6)
    assert cache.stats["capture"] == 4 and len(cache.graphs) == 4


def test_hoisted_and_per_step_kv_both_replay(model):
    ids = torch.randint(0, 256, (1, 5 * SEG))
    ref = _compress(model, ids)
    cache = cuda_graph.graph_cache(model, capturer=cuda_graph.EagerCapture())
    model.configure(cuda_graphs=True)
    model.configure(kv_hoist_max_segments=1)         # every step projects its own K/V
    a = _compress(model, ids)
    model.configure(kv_hoist_max_segments=16)        # views into one hoisted product
    b = _compress(model, ids)
    assert torch.equal(a, ref) and torch.equal(b, ref)
    assert cache.stats["capture"] == 1 and cache.stats["replay"] == 10


def test_weight_change_invalidates(model):
    ids = torch.randint(0, 256, (1, 3 * SEG))
    cache = cuda_graph.graph_cache(model, capturer=cuda_graph.EagerCapture())
    model.configure(cuda_graphs=True)
    _compress(model, ids)
    assert cache.stats["capture"] == 1 and cache.invalidations == 0
    with torch.no_grad():
        model.compressor.layers[0].ff.w1.weight.mul_(1.5)   # bumps _version
    model.configure(cuda_graphs=False)
    ref = _compress(model, ids)
    model.configure(cuda_graphs=True)
    got = _compress(model, ids)
    assert cache.invalidations == 1 and cache.stats["capture"] == 2
    assert torch.equal(got, ref)
    # a replaced parameter tensor (new storage) also invalidates
    w = model.compressor.norm.weight
    model.compressor.norm.weight = torch.nn.Parameter(w.detach().clone() * 0.5)
    _compress(model, ids)
    assert cache.invalidations == 2 and cache.stats["capture"] == 3


def test_graph_steps_under_autograd_are_never_replayed(model):
    ids = torch.randint(0, 256, (1, 4 * SEG))
    cache = cuda_graph.graph_cache(model, capturer=cuda_graph.EagerCapture())
    model.configure(cuda_graphs=True)
    mem = model.compress(ids, segment_len=SEG, bptt=bptt.Full())      # every step has a graph
    assert cache.stats["capture"] == 0 and cache.stats["replay"] == 0
    mem.hidden.sum().backward()
    assert model.compressor.layers[0].ff.w1.weight.grad is not None
    model.zero_grad(set_to_none=True)
    # Selective(steps=[3]): step 3 keeps a graph; the three graph-free ones replay
    mem = model.compress(ids, segment_len=SEG, bptt=bptt.Selective(steps=[3]))
    assert cache.stats["replay"] == 3 and mem.hidden.requires_grad
    mem.hidden.sum().backward()
    assert model.compressor.layers[0].ff.w1.weight.grad is not None


def test_direct_policy_checks():
    m = tiny_lcirc()
    cache = cuda_graph.StepGraphCache(m.compressor, cuda_graph.EagerCapture(), max_graphs=2)
    st = torch.randn(1, 4, 64)
    kv = [(torch.randn(1, 8, 4, 16), torch.randn(1, 8, 4, 16)) for _ in range(2)]
    with torch.enable_grad():
        cache.step(st, kv)
    assert cache.stats["bypass:grad-enabled"] == 1
    with torch.no_grad():
        cache.step(st, kv[:1])
        assert cache.stats["bypass:kv-layer-count"] == 1
        cache.step(st, [kv[0], (kv[1][0][:, :5], kv[1][1][:, :5])])
        assert cache.stats["bypass:kv-mismatch"] == 1
        assert cache.bypass_reason(st.double(), kv) == "state-mismatch"
        assert cache.bypass_reason(st.expand(2, -1, -1), kv) == "state-mismatch"
        assert cache.bypass_reason(st, kv) is None
        for length in (8, 6, 4):                                # LRU keeps the newest two
            cache.step(st, [(k[:, :length], v[:, :length]) for k, v in kv])
        assert [k.seg_len for k in cache.graphs] == [6, 4]
    with pytest.raises(ValueError, match="max_graphs"):
        cuda_graph.StepGraphCache(m.compressor, max_graphs=0)
    with pytest.raises(ValueError, match="warmup"):
        cuda_graph.CudaGraphCapture(warmup=0)


def test_capture_failure_names_the_way_out(model):
    class Broken:
        requires_cuda = False

        def capture(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing")

    cuda_graph.graph_cache(model, capturer=Broken())
    model.configure(cuda_graphs=True)
    with pytest.raises(RuntimeError, match=r"configure\(cuda_graphs=False\)"):
        _compress(model, torch.randint(0, 256, (1, 2 * SEG)))
