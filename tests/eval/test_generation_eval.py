import json

import pytest
import torch

from lcirc_fast.data.truncation import head_tail
from lcirc_fast.eval import generate_answer, longbench_eval, passkey_eval
from lcirc_testutils import tiny_lcirc, tiny_llama


class _Spy:
    """Wraps an LCIRC model and records what generate/compress receive."""

    def __init__(self, model):
        self.m, self.calls = model, []

    def __getattr__(self, k):
        return getattr(self.m, k)

    def compress(self, ids, **kw):
        self.calls.append(("compress", ids.shape[1]))
        return self.m.compress(ids, **kw)

    def generate(self, ids, memory=None, **kw):
        self.calls.append(("generate", ids.shape[1], memory is not None))
        return self.m.generate(ids, memory=memory, **kw)


@pytest.fixture(scope="module")
def sp_tok():
    from lcirc_fast.assets import llama_sp_tokenizer

    return llama_sp_tokenizer()


@pytest.fixture(scope="module")
def tiny32k():
    base = tiny_llama(vocab=32000, hidden=32, layers=2, heads=2, kv_heads=1, ffn=64)
    return tiny_lcirc(base, num_latents=4, compressor_layers=1, max_segment_len=256, segment_len=128,
                      query_dependent=True).eval()


def test_generation_short_prompt_is_not_truncated_or_compressed(tiny32k, sp_tok):
    spy = _Spy(tiny32k)
    prompt = torch.arange(5, 45)
    generate_answer(spy, sp_tok, prompt, window=64, max_new_tokens=4, mode="lcirc")
    assert spy.calls == [("generate", 40, False)]
    spy.calls.clear()
    long = torch.arange(5, 205)
    generate_answer(spy, sp_tok, long, window=64, max_new_tokens=4, mode="qd", query_ids=torch.arange(5, 9),
                    segment_len=64)
    assert spy.calls == [("compress", 200 - 60), ("generate", 60, True)]
    assert torch.equal(head_tail(long, 60).llm_ids[:30], long[:30])
    with pytest.raises(ValueError, match="full"):
        generate_answer(spy, sp_tok, long, 64, 4, "full", max_full_tokens=100)


def test_passkey_eval_runs_every_cell(tiny32k, sp_tok):
    docs = [(f"B{i}", torch.randint(100, 30000, (600,))) for i in range(3)]
    res = passkey_eval(tiny32k, sp_tok, docs, window=96, lengths=[60, 200], depths=[0.5],
                       modes=["base", "qd", "lcirc"], samples=2, segment_len=64, max_new_tokens=3)
    rows = {(r["mode"], r["length"]): r for r in res["rows"]}
    assert len(rows) == 6 and all(rows[(m, n)]["failed"] == 0 for m in ("base", "qd") for n in (60, 200))
    # a QD model cannot compress without its query: those samples are counted as failures
    assert rows[("lcirc", 200)]["failed"] == 2 and rows[("lcirc", 200)]["accuracy"] == 0.0
    assert len(res["failures"]) == sum(r["failed"] for r in res["rows"]) >= 2
    assert all("query_ids" in f["error"] for f in res["failures"])
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["digit_accuracy"] <= 1.0 for r in res["rows"])
    assert all(len(r["predictions"]) == 2 for r in res["rows"])
    assert rows[("lcirc", 200)]["digit_accuracy"] == 0.0  # failures score 0 here too


def test_longbench_eval_counts_failures(tiny32k, sp_tok, tmp_path):
    rows = [{"id": "1", "input": "Who?", "context": "Some text. " * 5, "answers": ["x"]},
            {"id": "2", "input": "What?", "context": "word " * 400, "answers": ["y"]}]
    preds = []
    res = longbench_eval(tiny32k, sp_tok, rows, window=128, modes=["base", "full"], max_new_tokens=4,
                         segment_len=64, predictions=preds)
    by = {r["mode"]: r for r in res["rows"]}
    assert by["base"]["n"] == 2 and by["base"]["failed"] == 0
    # full attention refuses the long row (max_full_tokens default 8192 is not hit) -> force one:
    res2 = longbench_eval(tiny32k, sp_tok, rows + [{"id": "3", "input": "q", "context": "c", "answers": []}],
                          window=128, modes=["base"], max_new_tokens=2, segment_len=64)
    assert res2["rows"][0]["n"] == 3 and res2["rows"][0]["failed"] == 1  # empty gold list fails loudly
    assert "no gold answers" in res2["failures"][0]["error"]
    assert len(preds) == 4 and {p["mode"] for p in preds} == {"base", "full"}
    assert json.dumps(res)  # serialisable
