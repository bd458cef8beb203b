import json
import math

import pytest
import torch
from lcirc_testutils import tiny_lcirc as make_lcirc
from lcirc_testutils import tiny_llama

from lcirc_fast.eval import (
    ScoreBoard,
    best_over,
    contains_answer,
    digit_accuracy,
    exact_match,
    first_line,
    format_table,
    normalize_answer,
    perplexity_by_length,
    plot_lines,
    run_scored,
    token_f1,
    window_nll,
    write_json,
)


def test_normalisation_and_metrics():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    assert exact_match("the Rome.", "Rome") == 1.0 and exact_match("Roma", "Rome") == 0.0
    assert token_f1("a red apple tree", "the apple tree") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("", "x") == 0.0 and token_f1("", "") == 1.0 and token_f1("dog", "cat") == 0.0
    assert best_over(token_f1, "paris france", ["london", "paris"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        best_over(token_f1, "x", [])
    assert first_line("\n\nanswer one\nmore text") == "answer one"
    assert contains_answer("The pass key is 12345.", "12345") == 1.0
    assert contains_answer("1234", "12345") == 0.0


def test_harness_counts_forced_failure():
    def fn(x):
        if x == 2:
            raise RuntimeError("forced")
        return float(x > 0)
    b = run_scored(ScoreBoard("t"), [0, 1, 2, 3], fn)
    assert b.n == 4 and len(b.failures) == 1 and "forced" in b.failures[0]["error"]
    assert b.score == pytest.approx(2 / 3) and b.score_with_failures == pytest.approx(2 / 4)
    row = b.row()
    assert row["failed"] == 1 and row["ok"] == 3
    table = format_table([row], ["name", "n", "failed", "score"])
    assert "| t | 4 | 1 | 0.6667 |" in table


@pytest.fixture(scope="module")
def tiny_lcirc():
    model = make_lcirc(tiny_llama(vocab=256, hidden=64, layers=2, heads=4, kv_heads=2, ffn=128),
                       num_latents=4, compressor_layers=1, max_segment_len=64, segment_len=32)
    with torch.no_grad():
        for blk in model.gca.values():
            blk.attn_gate.fill_(1.0)
    return model.eval()


def test_window_nll_modes(tiny_lcirc):
    ids = torch.randint(0, 256, (100,))
    base, n = window_nll(tiny_lcirc, ids, 32, "base", segment_len=16)
    lc, n2 = window_nll(tiny_lcirc, ids, 32, "lcirc", segment_len=16)
    full, n3 = window_nll(tiny_lcirc, ids, 32, "full", segment_len=16)
    assert n == n2 == n3 == 31
    assert base != lc and base != full  # the memory / longer context changes the scores
    # with no prefix, LCIRC is exactly the base model
    a, _ = window_nll(tiny_lcirc, ids[:32], 32, "base")
    b, _ = window_nll(tiny_lcirc, ids[:32], 32, "lcirc")
    assert a == b
    with pytest.raises(ValueError, match="mode"):
        window_nll(tiny_lcirc, ids, 32, "nope")


def test_perplexity_by_length_counts_failures(tiny_lcirc, tmp_path):
    docs = [torch.randint(0, 256, (128,)) for _ in range(3)]
    docs.append(torch.full((128,), 999))  # out of vocabulary: forced failure
    docs.append(torch.randint(0, 256, (40,)))  # too short for 2x and 4x
    res = perplexity_by_length(tiny_lcirc, docs, 32, [1, 2, 4], ["base", "lcirc", "full"], segment_len=32,
                               max_full_tokens=64)
    rows = {(r["length"], r["mode"]): r for r in res["rows"]}
    assert (128, "full") not in rows  # beyond max_full_tokens
    r = rows[(128, "lcirc")]
    assert r["docs"] == 3 and r["failures"] == 1 and r["skipped_short"] == 1 and r["tokens"] == 3 * 31
    assert math.isfinite(r["ppl"]) and r["ppl"] > 1
    assert rows[(32, "base")]["docs"] == 4 and rows[(32, "base")]["failures"] == 1
    assert len(res["failures"]) == sum(r["failures"] for r in res["rows"])
    write_json(tmp_path / "r.json", res)
    assert json.loads((tmp_path / "r.json").read_text())["rows"][0]["mode"] == "base"
    ctrl = perplexity_by_length(tiny_lcirc, docs[:3], 32, [4], ["base", "lcirc", "lcirc_swapped"], segment_len=32)
    c = {r["mode"]: r for r in ctrl["rows"]}
    assert c["lcirc_swapped"]["docs"] == 3 and c["lcirc_swapped"]["tokens"] == c["lcirc"]["tokens"]
    assert c["lcirc_swapped"]["nll"] != c["lcirc"]["nll"]  # a different memory, same scored tokens
    (pg,) = ctrl["paired"]
    assert pg["length"] == 128 and pg["docs"] == 3 and 0 <= pg["own_better"] <= 3
    # the mean per-document gap equals the difference of the pooled NLLs (equal tokens per doc)
    assert pg["mean_gap"] == pytest.approx(c["lcirc_swapped"]["nll"] - c["lcirc"]["nll"], abs=1e-9)
    assert pg["se"] > 0
    assert res["paired"] == []  # no swapped control asked for, no paired entry
    plot_lines(tmp_path / "p.png", {"base": [(32, 3.0), (64, 2.0)]}, "x", "y", "t")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_digit_accuracy_matches_digits_in_place():
    assert digit_accuracy(" 12345 is the key", "12345") == 1.0
    assert digit_accuracy("12945", "12345") == pytest.approx(0.8)
    assert digit_accuracy("123", "12345") == pytest.approx(0.6)  # missing digits are wrong
    assert digit_accuracy("no digits at all", "12345") == 0.0
    assert digit_accuracy("2345", "12345") == 0.0  # shifted digits do not count
    with pytest.raises(ValueError, match="no digits"):
        digit_accuracy("12", "abc")
