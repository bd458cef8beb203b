"""The model is safe to share: the QD question-free cache equals a full compress, and concurrent
forwards with different memories read only their own."""
import threading

import pytest
import torch
from lcirc_testutils import tiny_lcirc

from lcirc_fast.models.segment_kv_cache import DocumentKV


@pytest.mark.parametrize("input_layers", [0, 1])
def test_document_kv_equals_full_qd_compress(input_layers):
    model = tiny_lcirc(query_dependent=True, randomize_gates=True,
                       compressor_input_layers=input_layers).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (1, 45), generator=g)       # segments of unequal length
    doc = DocumentKV.build(model, ids)
    assert doc.num_segments > 2 and doc.num_tokens == 45 and doc.nbytes > 0
    for tq in (3, 7):
        q = torch.randint(0, 256, (1, tq), generator=g)
        with torch.no_grad():
            full = model.compress(ids, query_ids=q)
        cached = doc.compress(model, q)
        assert cached.num_segments == full.num_segments
        torch.testing.assert_close(cached.hidden, full.hidden, rtol=1e-5, atol=1e-5)
        assert model.owns(cached)
    other = doc.compress(model, torch.randint(0, 256, (1, 3), generator=g))
    assert not torch.allclose(other.hidden, cached.hidden)     # the query matters


def test_concurrent_forwards_read_their_own_memory():
    torch.manual_seed(0)
    model = tiny_lcirc(randomize_gates=True).eval()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        mems = [model.compress(torch.randint(0, 256, (1, 24 + 8 * i), generator=g)) for i in range(2)]
    x = torch.randint(0, 256, (1, 6), generator=g)
    with torch.no_grad():
        alone = [model(x, memory=m).logits for m in mems]
    assert not torch.allclose(alone[0], alone[1])
    # Both threads reach the first GCA hook before either runs it, so their calls overlap.
    barrier = threading.Barrier(2, timeout=20)
    first = model.adapter.decoder_layers(model.base)[int(next(iter(model.gca)))]

    def meet(*_):
        barrier.wait()

    handle = first.register_forward_pre_hook(meet, prepend=True)
    out: dict = {}

    def run(i):
        with torch.no_grad():
            out[i] = model(x, memory=mems[i]).logits

    try:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        handle.remove()
    # Each thread's logits are its own memory's: equal to that memory's forward alone up to the
    # summation order of another thread count (an engine elsewhere in the process may have set
    # torch's default for new threads), and far from the other memory's.
    for i in range(2):
        torch.testing.assert_close(out[i], alone[i], rtol=1e-5, atol=1e-5)
        assert (out[i] - alone[1 - i]).abs().max() > 1e3 * (out[i] - alone[i]).abs().max() + 1e-3
