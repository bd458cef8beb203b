"""A lone question reads its document's cached memory K/V as it is (no padded copy), with the
same greedy tokens as the padded, batched path."""
import torch

from lcirc_fast.serving import Engine, EngineSettings
from lcirc_fast.serving.engine import Row

TEXT = "The lighthouse keeper counted ships from the north each morning before the tide. " * 5


def test_lone_row_reads_cached_kv_without_copy(load_tiny, tmp_path):
    model, tok = load_tiny("lcirc")
    engine = Engine(model, tok, str(tmp_path), EngineSettings(max_batch=4))
    try:
        doc = engine.add_document(TEXT)[0]["id"]
        short = engine.add_document("Ships came from the north. " * 2)[0]["id"]
        row = Row(engine.encode("Who counted ships?"), 6, lambda *a: None, doc_id=doc)
        kv, lengths = engine.batch_memory([row])
        cached, m = engine.cached(doc)
        assert lengths is None
        for name, (k, v) in kv.items():
            assert k.data_ptr() == cached[name][0].data_ptr() and k.shape[1] == m
            assert v.data_ptr() == cached[name][1].data_ptr()
        other = Row(engine.encode("Where from?"), 6, lambda *a: None, doc_id=short)
        padded, plen = engine.batch_memory([row, other])       # padded to the longer memory
        assert plen is not None and int(plen[0]) == m and int(plen[1]) < m
        for name, (k, v) in kv.items():
            assert torch.equal(padded[name][0][:1], k) and torch.equal(padded[name][1][:1], v)
        got = []
        done = []
        row = Row(engine.encode("Who counted ships?"), 6,
                  lambda kind, val: got.append(val) if kind == "token" else done.append(kind),
                  doc_id=doc)
        engine.batcher.run([row])
        from lcirc_fast.models.generation import generate

        prompt = torch.tensor([row.prompt_ids])
        with torch.no_grad():
            memory = model.compress(torch.tensor([engine.encode(TEXT)]))
        want = generate(model, prompt, memory=memory, max_new_tokens=6,
                        eos_token_id=tok.eos_token_id, pad_token_id=engine.pad)[0, prompt.shape[1]:]
        want = [t for t in want.tolist() if t != tok.eos_token_id][:len(got)]
        assert done and got == want and len(got) >= 1
    finally:
        engine.close()


def test_rows_of_one_document_share_its_memory(load_tiny, tmp_path):
    model, tok = load_tiny("lcirc")
    engine = Engine(model, tok, str(tmp_path), EngineSettings(max_batch=4))
    try:
        doc = engine.add_document(TEXT)[0]["id"]
        questions = ["Who counted ships?", "When?", "What did the keeper count each morning?"]

        def row(q, sink=lambda *a: None):
            return Row(engine.encode(q), 6, sink, doc_id=doc)

        kv, lengths = engine.batch_memory([row(q) for q in questions])
        cached, m = engine.cached(doc)
        assert lengths is None
        for name, (k, v) in kv.items():                  # the cached tensors, batch 1, no copy
            assert k.shape[0] == 1 and k.data_ptr() == cached[name][0].data_ptr()
        alone = []
        for q in questions:
            got = []
            engine.batcher.run([row(q, lambda kind, val, g=got: g.append(val) if kind == "token" else 0)])
            alone.append(got)
        together = [[] for _ in questions]
        engine.batcher.run([row(q, lambda kind, val, g=g: g.append(val) if kind == "token" else 0)
                            for q, g in zip(questions, together)])
        assert together == alone and all(alone)
    finally:
        engine.close()
