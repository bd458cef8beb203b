"""The memory cache: a document's projected K/V is reused by later questions, and a cache too
small to hold it still answers (reading the stored memory again) with the same tokens."""
import pytest
from fastapi.testclient import TestClient

from lcirc_fast.serving import Engine, EngineSettings
from lcirc_fast.serving.app import create_app

TEXT = "Seven lanterns hung along the harbour wall, each lit at dusk by the ferryman. " * 5
ASK = {"prompt": "Who lit the lanterns?", "max_tokens": 5, "temperature": 0}


@pytest.fixture(scope="module")
def model_and_tok(load_tiny):
    return load_tiny("lcirc")


@pytest.mark.parametrize("cache_bytes", [1 << 30, 1])
def test_cache_hits_and_a_cache_too_small(model_and_tok, tmp_path, cache_bytes):
    model, tok = model_and_tok
    engine = Engine(model, tok, str(tmp_path), EngineSettings(cache_bytes=cache_bytes))
    try:
        with TestClient(create_app(engine)) as client:
            doc = client.post("/v1/documents", json={"text": TEXT}).json()["id"]
            answers = [client.post("/v1/completions", json={**ASK, "document": doc}).json()
                       ["choices"][0]["text"] for _ in range(3)]
    finally:
        engine.close()
    assert answers[0] == answers[1] == answers[2]
    hits, misses = engine.cache.hits, engine.cache.misses
    if cache_bytes > 1:
        assert len(engine.cache) == 1 and hits == 3 and misses == 0
    else:
        assert len(engine.cache) == 0 and engine.cache.nbytes == 0 and misses == 3
    assert engine.metrics.compressed._value.get() == 1          # compressed once either way
