"""K/V hoisting: graph-free compression steps share one K/V product per chunk of segments."""
import pytest
import torch
from lcirc_testutils import lcirc_params, tiny_lcirc

from lcirc_fast import bptt
from lcirc_fast.modules import PerceiverCompressor

SEG = 8


@pytest.fixture
def products(monkeypatch):
    """Records the row count of every K/V product and every folded-weight computation."""
    rows, folds = [], []
    real_product = PerceiverCompressor._kv_product
    real_fold = PerceiverCompressor.folded_kv_weight

    def product(xhat, w, bias, out=None):
        rows.append(xhat.numel() // xhat.shape[-1])
        return real_product(xhat, w, bias, out)

    def fold(self):
        folds.append(torch.is_grad_enabled())
        return real_fold(self)

    monkeypatch.setattr(PerceiverCompressor, "_kv_product", staticmethod(product))
    monkeypatch.setattr(PerceiverCompressor, "folded_kv_weight", fold)
    return rows, folds


def _randomize_norms(model):
    """Give every K/V LayerNorm a non-trivial affine, so the folded K/V product has a bias."""
    with torch.no_grad():
        for layer in model.compressor.layers:
            layer.attn.norm_x.weight.uniform_(0.5, 1.5)
            layer.attn.norm_x.bias.normal_(0.0, 0.5)
    return model


def _run(model, ids, hoist, proj=None, **kw):
    """compress (+ backward of a fixed loss when proj is given) with hoisting on or off."""
    model.configure(kv_hoist_max_segments=16 if hoist else 1)
    model.zero_grad(set_to_none=True)
    mem = model.compress(ids, **kw)
    grads = None
    if proj is not None:
        (mem.hidden.tanh() * proj).sum().backward()
        grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                 for n, p in lcirc_params(model)}
    return mem, grads


def test_no_grad_compress_equals_per_step_with_fewer_products(products):
    rows, folds = products
    model = _randomize_norms(tiny_lcirc(randomize_gates=True))
    ids = torch.randint(0, 256, (2, 6 * SEG + 5))               # 6 segments of 8, then 5
    with torch.no_grad():
        ref, _ = _run(model, ids, hoist=False, segment_len=SEG)
        assert len(rows) == 7 and len(folds) == 1               # one fold per call, not per step
        rows.clear()
        folds.clear()
        got, _ = _run(model, ids, hoist=True, segment_len=SEG)
    assert rows == [2 * 6 * SEG, 2 * 5]                         # one product for the run of 6
    assert len(folds) == 1 and folds == [False]
    torch.testing.assert_close(got.hidden, ref.hidden, rtol=1e-5, atol=1e-6)
    assert got.num_segments == ref.num_segments == 7


def test_chunk_size_and_memory_budget_bound_the_products(products):
    rows, _ = products
    model = tiny_lcirc()
    ids = torch.randint(0, 256, (2, 7 * SEG))
    with torch.no_grad():
        ref = model.compress(ids, segment_len=SEG).hidden
        rows.clear()
        model.configure(kv_hoist_max_segments=3)
        a = model.compress(ids, segment_len=SEG).hidden
        assert [r // (2 * SEG) for r in rows] == [3, 3, 1]
        rows.clear()
        c = model.compressor
        per_segment = 2 * SEG * (len(c.layers) * 2 * c.heads * c.head_dim + 2 * c.dim) * 4
        model.configure(kv_hoist_max_segments=16)
        model.configure(kv_hoist_budget_bytes=2 * per_segment + 1)     # room for two segments
        b = model.compress(ids, segment_len=SEG).hidden
        assert [r // (2 * SEG) for r in rows] == [2, 2, 2, 1]
    torch.testing.assert_close(a, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, ref, rtol=1e-5, atol=1e-6)


def test_unequal_lengths_split_the_runs(products):
    rows, _ = products
    model = tiny_lcirc()
    ids = torch.randint(0, 256, (1, 37))
    bounds = [0, 8, 16, 23, 30, 37]
    with torch.no_grad():
        ref, _ = _run(model, ids, hoist=False, boundaries=bounds)
        rows.clear()
        got, _ = _run(model, ids, hoist=True, boundaries=bounds)
    assert rows == [16, 21]                                     # [8, 8] and [7, 7, 7]
    torch.testing.assert_close(got.hidden, ref.hidden, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy,expect_rows", [
    (bptt.Selective(steps=[2, 5]), [2, 1, 2, 1, 2]),   # none: [0,1] [3,4] [6,7]; graph: 2, 5
    (bptt.Truncated(2), [6, 1, 1]),                    # none: 0..5; graph: 6, 7
    (bptt.Full(), [1] * 8),                            # every step keeps its graph
])
def test_graph_steps_keep_per_step_kv_and_gradients_match(products, policy, expect_rows):
    rows, folds = products
    model = _randomize_norms(tiny_lcirc(randomize_gates=True))
    ids = torch.randint(0, 256, (2, 8 * SEG))
    proj = torch.randn(2, 8 * model.config.num_latents, model.config.hidden_size)
    ref, gref = _run(model, ids, hoist=False, proj=proj, segment_len=SEG, bptt=policy)
    rows.clear()
    folds.clear()
    got, g = _run(model, ids, hoist=True, proj=proj, segment_len=SEG, bptt=policy)
    assert [r // (2 * SEG) for r in rows] == expect_rows
    assert len(folds) <= 2                                  # not one fold per step
    torch.testing.assert_close(got.hidden, ref.hidden, rtol=1e-5, atol=1e-6)
    for j, slot in enumerate(got.slots):                    # graphs exactly where they were
        assert (slot.grad_fn is None) == (ref.slots[j].grad_fn is None), j
    for name in gref:
        torch.testing.assert_close(g[name], gref[name], rtol=1e-4, atol=1e-6, msg=name)
    assert g["compressor.layers.0.attn.to_kv.weight"].abs().sum() > 0


def test_qd_model_hoisting_equals_per_step(products):
    rows, _ = products
    model = tiny_lcirc(query_dependent=True, randomize_gates=True)
    ids = torch.randint(0, 256, (2, 4 * SEG))
    q = torch.randint(0, 256, (2, 5))
    with torch.no_grad():
        ref, _ = _run(model, ids, hoist=False, segment_len=SEG, query_ids=q)
        rows.clear()
        got, _ = _run(model, ids, hoist=True, segment_len=SEG, query_ids=q)
    assert len(rows) == 1
    torch.testing.assert_close(got.hidden, ref.hidden, rtol=1e-5, atol=1e-6)


def test_append_computes_one_fold_per_call(products):
    rows, folds = products
    model = tiny_lcirc()
    ids = torch.randint(0, 256, (1, 4 * SEG))
    mem = model.compress(ids[:, :2 * SEG], segment_len=SEG, bptt=bptt.Truncated(3))
    folds.clear()
    mem.append(model, ids[:, 2 * SEG:3 * SEG], bptt=bptt.Truncated(3))   # re-runs 2 + 1 new
    assert len(folds) == 1 and len(rows) == 2 + 2 + 1


@pytest.mark.parametrize("attr,value", [("kv_hoist_max_segments", 0),
                                        ("kv_hoist_max_segments", 2.5),
                                        ("kv_hoist_budget_bytes", -1)])
def test_bad_hoisting_settings(attr, value):
    model = tiny_lcirc()
    with pytest.raises(ValueError, match=attr):
        model.configure(**{attr: value})
    with pytest.raises(ValueError, match=attr):
        tiny_lcirc(**{attr: value})
    with pytest.raises(ValueError, match="not runtime settings"):
        model.configure(num_latents=2)


def test_segments_kv_matches_segment_kv_and_checks_shapes():
    comp = tiny_lcirc().compressor
    emb = torch.randn(2, 3, 7, comp.dim)
    with torch.no_grad():
        together = comp.segments_kv(emb)
        for j in range(3):
            alone = comp.segment_kv(emb[:, j])
            for (k1, v1), (k2, v2) in zip(together[j], alone):
                torch.testing.assert_close(k1, k2, rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="segments, length"):
        comp.segments_kv(emb[0])
    with pytest.raises(ValueError, match="width"):
        comp.segments_kv(torch.randn(1, 1, 3, comp.dim + 1))
    with pytest.raises(ValueError, match="position table"):
        comp.segments_kv(torch.randn(1, 2, comp.max_segment_len + 1, comp.dim))


def test_cpu_products_reuse_one_workspace():
    """Hoisted CPU products write into the recurrence's workspace: one buffer, reused across
    chunks and calls, never read after its chunk, freed by release()."""
    model = tiny_lcirc(randomize_gates=True)
    ws = model.recurrence.workspace
    ids = torch.randint(0, 256, (2, 7 * SEG))
    c = model.compressor
    per_segment = 2 * SEG * len(c.layers) * 2 * c.heads * c.head_dim
    with torch.no_grad():
        model.configure(kv_hoist_max_segments=1)
        ref = model.compress(ids, segment_len=SEG).hidden           # no hoisting: no workspace
        assert ws.nbytes == 0
        model.configure(kv_hoist_max_segments=3)                    # chunks of 3, 3 and 1
        a = model.compress(ids, segment_len=SEG).hidden
        assert ws.nbytes == 3 * per_segment * 4
        ptr = ws.take(1, torch.float32, torch.device("cpu")).data_ptr()
        b = model.compress(ids, segment_len=SEG).hidden
        assert ws.take(1, torch.float32, torch.device("cpu")).data_ptr() == ptr
        ws.take(1, torch.float32, torch.device("cpu")).fill_(float("nan"))   # stale contents
        c2 = model.compress(ids, segment_len=SEG).hidden
    for got in (a, b, c2):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    ws.release()
    assert ws.nbytes == 0
    assert ws.take(4, torch.float32, torch.device("meta")) is None      # off the CPU: none


def test_segments_kv_into_a_buffer_checks_its_size():
    comp = PerceiverCompressor(16, 2, 2, 8, 32, 8)
    emb = torch.randn(1, 2, 4, 16)
    n = 1 * 2 * 4 * 2 * 2 * 2 * 8
    with torch.no_grad():
        ref = comp.segments_kv(emb)
        got = comp.segments_kv(emb, out=torch.empty(n))
        with pytest.raises(ValueError, match="contiguous buffer of 512 elements"):
            comp.segments_kv(emb, out=torch.empty(n + 1))
    for rs, gs in zip(ref, got):
        for (rk, rv), (gk, gv) in zip(rs, gs):
            torch.testing.assert_close(gk, rk)
            torch.testing.assert_close(gv, rv)


def test_release_buffers_frees_the_workspace_and_the_packed_weights():
    from lcirc_fast.modules.linear import PackedLinear
    from lcirc_fast.ops.cpu_gemm import mkl_packing_available
    model = tiny_lcirc()
    ids = torch.randint(0, 256, (1, 4 * SEG))
    with torch.no_grad():
        ref = model.compress(ids, segment_len=SEG).hidden
    packed = [m for m in model.compressor.modules() if isinstance(m, PackedLinear)]
    assert len(packed) == 4 * len(model.compressor.layers)      # to_q, to_out, FFN w1, w2
    assert model.recurrence.workspace.nbytes > 0
    assert all(m._pack.packed is not None for m in packed) is mkl_packing_available()
    model.release_buffers()
    assert model.recurrence.workspace.nbytes == 0
    assert all(m._pack.packed is None for m in packed)
    with torch.no_grad():
        torch.testing.assert_close(model.compress(ids, segment_len=SEG).hidden, ref)


def test_threads_compressing_at_once_get_their_own_workspace():
    import threading
    model = tiny_lcirc(randomize_gates=True)
    model.configure(kv_hoist_max_segments=4)
    docs = [torch.randint(0, 256, (2, 8 * SEG)) for _ in range(2)]
    with torch.no_grad():
        refs = [model.compress(d, segment_len=SEG).hidden for d in docs]
    model.release_buffers()
    results: dict = {}
    start = threading.Barrier(2)

    def work(i):
        start.wait()
        with torch.no_grad():
            results[i] = [model.compress(docs[i], segment_len=SEG).hidden for _ in range(5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        for got in results[i]:
            torch.testing.assert_close(got, refs[i], rtol=1e-5, atol=1e-6)
    ws = model.recurrence.workspace
    assert len(ws._bufs) == 2 and ws.nbytes == 2 * ws._bufs[threads[0].ident].numel() * 4
