import json

import pytest
import torch
from lcirc_testutils import tiny_lcirc, tiny_llama

from lcirc_fast.data.truncation import head_tail
from lcirc_fast.eval import generate_answer, longbench_eval, passkey_eval


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
    assert len(res["predictions"]) == 12 and all("predictions" not in r for r in res["rows"])
    assert [r["answer"] for r in res["predictions"] if (r["mode"], r["length"]) == ("lcirc", 200)] == [None, None]
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


@pytest.fixture(scope="module")
def tiny32k_plain():
    base = tiny_llama(vocab=32000, hidden=32, layers=2, heads=2, kv_heads=1, ffn=64)
    return tiny_lcirc(base, num_latents=4, compressor_layers=1, max_segment_len=256,
                      segment_len=128, randomize_gates=True).eval()


def test_generation_with_another_prompt_s_memory(tiny32k_plain, sp_tok):
    """memory_from compresses the other prompt's middle and keeps this prompt's head and tail."""
    a, b = torch.arange(5, 205), torch.arange(1000, 1230)
    spy = _Spy(tiny32k_plain)
    seen = []
    real = spy.compress

    def compress(ids, **kw):
        seen.append(ids.clone())
        return real(ids, **kw)

    spy.compress = compress
    own = generate_answer(spy, sp_tok, a, 64, 4, "lcirc", segment_len=64)
    swapped = generate_answer(spy, sp_tok, a, 64, 4, "lcirc", segment_len=64, memory_from=b)
    assert torch.equal(seen[0][0], head_tail(a, 60).middle)
    assert torch.equal(seen[1][0], head_tail(b, 60).middle)
    assert [c for c in spy.calls if c[0] == "generate"] == [("generate", 60, True)] * 2
    assert isinstance(own, str) and isinstance(swapped, str)
    with pytest.raises(ValueError, match="both prompts longer than the 60-token window"):
        generate_answer(spy, sp_tok, a, 64, 4, "lcirc", memory_from=torch.arange(5, 30))
    with pytest.raises(ValueError, match="memory_from needs mode"):
        generate_answer(spy, sp_tok, a, 64, 4, "base", memory_from=b)


def test_passkey_swapped_control_reads_the_next_sample_s_memory(tiny32k_plain, sp_tok, monkeypatch):
    import lcirc_fast.eval.passkey as pk
    docs = [(f"B{i}", torch.randint(100, 30000, (600,))) for i in range(3)]
    calls = []
    real = pk.generate_answer

    def spy(model, tok, prompt, *a, memory_from=None, **kw):
        calls.append((prompt.clone(), memory_from))
        return real(model, tok, prompt, *a, memory_from=memory_from, **kw)

    monkeypatch.setattr(pk, "generate_answer", spy)
    res = passkey_eval(tiny32k_plain, sp_tok, docs, window=96, lengths=[200], depths=[0.5],
                       modes=["lcirc", "lcirc_swapped"], samples=3, segment_len=64,
                       max_new_tokens=3)
    own, swapped = calls[:3], calls[3:]
    assert all(m is None for _, m in own) and len(swapped) == 3
    for j, (prompt, mem) in enumerate(swapped):
        assert torch.equal(prompt, own[j][0])                    # the sample's own head and tail
        assert torch.equal(mem, own[(j + 1) % 3][0])             # the next sample's prompt
    rows = {r["mode"]: r for r in res["rows"]}
    sw = rows["lcirc_swapped"]
    assert sw["failed"] == 0 and 0.0 <= sw["partner_accuracy"] <= 1.0
    assert 0.0 <= sw["partner_digit_accuracy"] <= 1.0
    assert all(len(r["digit_accuracy_by_pos"]) == 5 for r in res["rows"])
    for r in res["rows"]:
        assert abs(sum(r["digit_accuracy_by_pos"]) / 5 - r["digit_accuracy"]) < 1e-9
    assert "partner_accuracy" not in rows["lcirc"]
    keys = [p["key"] for p in res["predictions"] if p["mode"] == "lcirc"]
    assert [p["memory_key"] for p in res["predictions"] if p["mode"] == "lcirc_swapped"] == keys[1:] + keys[:1]
    assert "partner_lenient_contains" in sw
    with pytest.raises(ValueError, match="samples >= 2"):
        passkey_eval(tiny32k_plain, sp_tok, docs, window=96, lengths=[200], depths=[0.5],
                     modes=["lcirc_swapped"], samples=1)


def test_digit_hits_and_pooling_by_length():
    from lcirc_fast.eval.metrics import digit_accuracy, digit_hits
    from lcirc_fast.eval.passkey import by_length
    assert digit_hits(" 1907909", "19079") == [True] * 5
    assert digit_hits("key: 1 2 x 7", "12345") == [True, True, False, False, False]
    assert digit_hits("", "123") == [False] * 3
    assert digit_accuracy("12x45", "12345") == 0.4                 # digits 1,2,4,5 against 1,2,3,4,5
    rows = [{"mode": "lcirc", "length": 256, "depth": d, "n": 2, "failed": f, "accuracy": a,
             "digit_accuracy": da, "digit_accuracy_by_pos": pos}
            for d, f, a, da, pos in ((0.25, 0, 0.5, 0.6, [1.0, 0.5]), (0.75, 1, 0.0, 0.2, [0.5, 0.0]))]
    rows.append({**rows[0], "length": 512})
    pooled = {r["length"]: r for r in by_length(rows)}
    p = pooled[256]
    assert (p["n"], p["failed"], p["accuracy"]) == (4, 1, 0.25)
    assert abs(p["digit_accuracy"] - 0.4) < 1e-12 and p["digit_accuracy_by_pos"] == [0.75, 0.25]
    assert pooled[512]["n"] == 2 and "partner_accuracy" not in p


def test_passkey_strict_headline_and_lenient_counts_beside_it():
    from lcirc_fast.eval.passkey import cell_row, rows_from_predictions

    # docs/results.md §11's examples: 19079 -> " 1907999" contains the key but its first integer is
    # 1907999, not 19079: strict 0, lenient 1. " 31503." is right by both rules. A failed sample
    # (answer None) counts 0 everywhere. Strict: 1/3; contains: 2/3; digits in place: 5 + 5 + 0 of 15.
    recs = [{"mode": "lcirc", "length": 256, "depth": 0.5, "index": i, "key": k, "answer": a}
            for i, (k, a) in enumerate([("19079", " 1907999"), ("31503", " 31503."), ("12345", None)])]
    row = cell_row(recs)
    assert (row["accuracy"], row["lenient_contains"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert row["digit_accuracy"] == pytest.approx(10 / 15) and row["failed"] == 1 and row["n"] == 3
    swapped = [{**r, "mode": "lcirc_swapped", "memory_key": m} for r, m in zip(recs, ["1907999", "1", "2"])]
    sw = cell_row(swapped)
    assert sw["partner_accuracy"] == pytest.approx(1 / 3) and sw["accuracy"] == pytest.approx(1 / 3)
    assert rows_from_predictions(recs + swapped) == [row, sw]


def test_greedy_generation_stops_at_eos(tiny32k_plain):
    class Ids:                      # a tokenizer whose decode shows the token ids
        def __init__(self, eos):
            self.eos_token_id = eos

        def decode(self, ids, skip_special_tokens=False):
            return " ".join(str(i) for i in ids.tolist() if not (skip_special_tokens and i == self.eos_token_id))

    prompt = torch.arange(5, 45)
    free = generate_answer(tiny32k_plain, Ids(None), prompt, 64, 6, "base").split()
    assert len(free) == 6
    eos = int(free[2])              # make the third greedy token the end token
    stopped = generate_answer(tiny32k_plain, Ids(eos), prompt, 64, 6, "base").split()
    cut = free.index(str(eos))      # the first time greedy decoding emits it
    assert stopped == free[:cut] and len(stopped) < 6
