"""QD-LCIRC serving in process: the document's question-free part is computed once, each question
runs only the latent recurrence, and the memory equals a full compress with that question."""
import pytest
import torch
from fastapi.testclient import TestClient

from lcirc_fast.serving import Engine, EngineSettings
from lcirc_fast.serving.app import create_app

TEXT = "The mill by the river ground wheat for three villages until the flood of 1911. " * 6


@pytest.fixture(scope="module")
def qd(load_tiny, tmp_path_factory):
    model, tok = load_tiny("qd")
    engine = Engine(model, tok, str(tmp_path_factory.mktemp("qdstore")),
                    EngineSettings(max_batch=4, max_tokens_limit=16))
    with TestClient(create_app(engine)) as client:
        yield engine, client
    engine.close()


def test_qd_memory_equals_full_compress(qd):
    engine, client = qd
    before = engine.metrics.compressed._value.get()    # other tests of the module may store TEXT first
    doc = client.post("/v1/documents", json={"text": TEXT}).json()
    model, tok = engine.model, engine.tok
    calls = []
    real = model.compressor.segments_kv
    model.compressor.segments_kv = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        for question in ("What did the mill grind?", "When was the flood?"):
            from lcirc_fast.serving.engine import Row

            q = tok(question, add_special_tokens=False).input_ids
            kv, m = engine.row_memory(Row([1], 1, None, doc_id=doc["id"], query_ids=q))
            ids = torch.tensor([tok(TEXT, add_special_tokens=False).input_ids])
            model.compressor.segments_kv = real
            with torch.no_grad():
                full = model.compress(ids, query_ids=torch.tensor([q]))
                want = model.memory_kv(full, use_cache=False)
            model.compressor.segments_kv = lambda *a, **k: calls.append(1) or real(*a, **k)
            assert m == len(full)
            for name in want:
                torch.testing.assert_close(kv[name][0], want[name][0], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(kv[name][1], want[name][1], rtol=1e-5, atol=1e-5)
    finally:
        model.compressor.segments_kv = real
    assert calls == []                    # questions reused the cached segment K/V
    assert engine.metrics.compressed._value.get() == before + doc["created"]   # questions compress nothing


def test_qd_answers_batched_equal_alone(qd):
    engine, client = qd
    docs = [client.post("/v1/documents", json={"text": t}).json()["id"]
            for t in (TEXT, "Bees keep the hive warm in winter by shivering their wings. " * 5)]
    questions = ["What did the mill grind?", "How do bees stay warm?", "When?", "Why?"]
    combos = [(q, d) for q in questions for d in docs]

    def ask(q, d):
        r = client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": q}], "max_tokens": 4, "temperature": 0,
            "document": d})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]

    alone = {c: ask(*c) for c in combos}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda c: ask(*c), combos * 2))
    assert together == [alone[c] for c in combos * 2]
    assert len(set(alone.values())) > 1
