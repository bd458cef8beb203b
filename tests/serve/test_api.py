"""`lcirc serve` through the `openai` client and raw HTTP: completions, chat, streaming,
documents, models, health, metrics, and the errors of bad input."""
import httpx
import pytest

DOC = ("The lighthouse keeper on the island of Tern kept a ledger of every ship. In the spring "
       "of 1903 the schooner Albatross came in with a broken mast and stayed nine days. ") * 6
KEY = {"Authorization": "Bearer sk-test"}


@pytest.fixture(scope="module")
def client(server):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test", max_retries=0,
                         timeout=60)


@pytest.fixture(scope="module")
def doc_id(server):
    r = httpx.post(server.url + "/v1/documents", json={"text": DOC}, headers=KEY, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["id"]


def _compressed_total(server) -> float:
    """The server's count of compressed documents, from /metrics."""
    metrics = httpx.get(server.url + "/metrics", headers=KEY).text
    line = next(ln for ln in metrics.splitlines() if ln.startswith("lcirc_documents_compressed_total "))
    return float(line.split()[1])


def test_documents_store_once_and_report(server, doc_id):
    import hashlib

    compressed = _compressed_total(server)
    again = httpx.post(server.url + "/v1/documents", json={"text": DOC}, headers=KEY, timeout=60)
    body = again.json()
    assert body["id"] == doc_id and body["created"] is False
    assert body["tokens"] > 40 and body["segments"] >= 3
    assert len(doc_id) == 64 and doc_id != hashlib.sha256(DOC.encode()).hexdigest()
    meta = httpx.get(f"{server.url}/v1/documents/{doc_id}", headers=KEY).json()
    assert meta == {k: body[k] for k in ("id", "object", "tokens", "segments")}
    assert compressed >= 1 and _compressed_total(server) == compressed     # not compressed again


def test_completion_reads_the_document(client, doc_id):
    plain = client.completions.create(model="x", prompt="The ship was", max_tokens=8,
                                      temperature=0)
    with_doc = client.completions.create(model="x", prompt="The ship was", max_tokens=8,
                                         temperature=0, extra_body={"document": doc_id})
    for r in (plain, with_doc):
        assert r.object == "text_completion" and r.choices[0].finish_reason in ("length", "stop")
        assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens >= 1
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.completions.create(model="x", prompt="The ship was", max_tokens=8,
                                      temperature=0, extra_body={"document": doc_id})
    assert again.choices[0].text == with_doc.choices[0].text       # greedy is repeatable
    assert with_doc.choices[0].text != plain.choices[0].text        # the memory is read


def test_chat_and_streaming_agree(client, doc_id):
    messages = [{"role": "user", "content": "Which ship came in?"}]
    full = client.chat.completions.create(model="x", messages=messages, max_tokens=6,
                                          temperature=0, extra_body={"document": doc_id})
    assert full.object == "chat.completion" and full.choices[0].message.role == "assistant"
    parts, reasons, usage = [], [], None
    for chunk in client.chat.completions.create(model="x", messages=messages, max_tokens=6,
                                                temperature=0, stream=True,
                                                extra_body={"document": doc_id}):
        assert chunk.object == "chat.completion.chunk"
        parts.append(chunk.choices[0].delta.content or "")
        reasons.append(chunk.choices[0].finish_reason)
        usage = getattr(chunk, "usage", None) or usage
    assert "".join(parts) == full.choices[0].message.content
    assert reasons[-1] == full.choices[0].finish_reason and all(r is None for r in reasons[:-1])
    assert usage.completion_tokens == full.usage.completion_tokens
    text = "".join(c.choices[0].text for c in client.completions.create(
        model="x", prompt="Tern", max_tokens=5, temperature=0, stream=True))
    assert text == client.completions.create(model="x", prompt="Tern", max_tokens=5,
                                             temperature=0).choices[0].text


def test_stream_ends_with_done(server):
    with httpx.stream("POST", server.url + "/v1/completions", headers=KEY, timeout=60,
                      json={"prompt": "a", "max_tokens": 3, "temperature": 0, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


def test_models_health_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny-lcirc"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"      # no key needed
    text = httpx.get(server.url + "/metrics", headers=KEY).text
    for name in ("lcirc_requests_total", "lcirc_errors_total", "lcirc_tokens_total",
                 "lcirc_request_latency_seconds_bucket", "lcirc_cache_hits_total",
                 "lcirc_cache_misses_total"):
        assert name in text


def test_sampling_with_seed_is_reproducible(client):
    kw = dict(model="x", prompt="Once", max_tokens=6, temperature=1.0, top_p=0.9, seed=7)
    assert client.completions.create(**kw).choices[0].text == \
        client.completions.create(**kw).choices[0].text


def error_of(r, status, code):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and err["type"]
    return err


@pytest.mark.parametrize("body,code", [
    (b'{"prompt": "x", "max_tokens": ', "invalid_json"),
    (b'{"prompt": "caf\xe9"}', "invalid_encoding"),
    (b'{"prompt": "x", "max_tokens": 0}', "invalid_max_tokens"),
    (b'{"prompt": "x", "max_tokens": 65}', "invalid_max_tokens"),
    (b'{"prompt": "x", "max_tokens": -3}', "invalid_max_tokens"),
    (b'{"max_tokens": 3}', "invalid_request"),
])
def test_bad_requests_get_400(server, body, code):
    r = httpx.post(server.url + "/v1/completions", content=body, headers=KEY)
    error_of(r, 400, code)


def test_unknown_document_too_long_prompt_body_too_large(server, client):
    import openai

    r = httpx.post(server.url + "/v1/completions", headers=KEY,
                   json={"prompt": "x", "max_tokens": 2, "document": "0" * 64})
    error_of(r, 404, "document_not_found")
    error_of(httpx.get(server.url + "/v1/documents/nope", headers=KEY), 404, "document_not_found")
    error_of(httpx.delete(server.url + "/v1/documents/" + "1" * 64, headers=KEY), 404,
             "document_not_found")
    r = httpx.post(server.url + "/v1/completions", headers=KEY,
                   json={"prompt": "word " * 600, "max_tokens": 4})
    error_of(r, 400, "context_length_exceeded")
    r = httpx.post(server.url + "/v1/documents", headers=KEY, json={"text": "y" * 300000})
    error_of(r, 413, "body_too_large")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="x", prompt="x", max_tokens=0)
    assert client.completions.create(model="x", prompt="still", max_tokens=2,
                                     temperature=0).choices[0].text is not None   # still serving


def test_api_key_is_required(server):
    import openai

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sk-test"}):
        error_of(httpx.get(server.url + "/v1/models", headers=headers), 401, "invalid_api_key")
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_delete_document(server):
    r = httpx.post(server.url + "/v1/documents", json={"text": "A short note to forget."},
                   headers=KEY, timeout=60)
    doc = r.json()["id"]
    assert httpx.delete(f"{server.url}/v1/documents/{doc}", headers=KEY).json()["deleted"]
    error_of(httpx.get(f"{server.url}/v1/documents/{doc}", headers=KEY), 404, "document_not_found")
    r = httpx.post(server.url + "/v1/completions", headers=KEY,
                   json={"prompt": "x", "max_tokens": 2, "document": doc})
    error_of(r, 404, "document_not_found")
