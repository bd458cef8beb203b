"""A bounded load test of a real server: 200 requests from 16 concurrent clients, with different
documents in one batch; no 5xx, no lost request, greedy answers equal to those served one at a
time."""
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

KEY = {"Authorization": "Bearer sk-test"}
TEXTS = ["The orchard behind the mill grows pears, plums and one old walnut tree. " * 5,
         "Captain Idris sailed the Morning Star from Valletta to Tunis in four days. " * 7,
         "A recipe: flour, water, salt and a spoon of honey, baked for forty minutes. " * 3]
PROMPTS = ["What grows there?", "Who sailed", "Tell me", "How long", "The answer is",
           "Where", "List the items:", "Once"]


def test_load_200_requests_16_clients(server):
    docs = [httpx.post(server.url + "/v1/documents", json={"text": t}, headers=KEY,
                       timeout=60).json()["id"] for t in TEXTS]
    combos = [(p, d) for p in PROMPTS for d in docs + [None]]

    def ask(client, prompt, doc):
        body = {"prompt": prompt, "max_tokens": 4, "temperature": 0}
        if doc is not None:
            body["document"] = doc
        return client.post(server.url + "/v1/completions", json=body, headers=KEY)

    with httpx.Client(timeout=60) as c:
        alone = {}
        for p, d in combos:                       # one at a time: each decodes alone
            r = ask(c, p, d)
            assert r.status_code == 200, r.text
            alone[(p, d)] = r.json()["choices"][0]["text"]
    assert len({alone[(p, d)] for p, d in combos if p == PROMPTS[0]}) > 1   # documents matter

    rng = random.Random(0)
    work = [rng.choice(combos) for _ in range(200)]

    def worker(items):
        out = []
        with httpx.Client(timeout=60) as c:
            for p, d in items:
                r = ask(c, p, d)
                out.append((p, d, r.status_code, r.json()))
        return out

    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = [x for part in pool.map(worker, [work[i::16] for i in range(16)], timeout=300)
                   for x in part]
    assert time.monotonic() - t0 < 300
    assert len(results) == 200                                          # nothing lost
    assert all(status < 500 for *_, status, _ in results)
    assert all(status == 200 for *_, status, _ in results)
    ids = {body["id"] for *_, body in results}
    assert len(ids) == 200
    wrong = [(p, d, body["choices"][0]["text"], alone[(p, d)]) for p, d, _, body in results
             if body["choices"][0]["text"] != alone[(p, d)]]
    assert not wrong
    metrics = httpx.get(server.url + "/metrics", headers=KEY).text
    single = float(re.search(r'lcirc_batch_size_bucket\{le="1.0"\} (\S+)', metrics).group(1))
    batches = float(re.search(r"lcirc_batch_size_count (\S+)", metrics).group(1))
    assert batches < 200 + len(combos) and single < batches            # rows shared batches
    one_doc = float(re.search(r'lcirc_batch_documents_bucket\{le="1.0"\} (\S+)', metrics).group(1))
    assert one_doc < batches                          # some batch read several documents
