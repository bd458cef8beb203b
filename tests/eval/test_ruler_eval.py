"""`lcirc eval ruler`, the predictions files of ruler and passkey (scores recomputed from them),
and `lcirc eval compare` (paired differences between two models)."""
import json
import math

import pytest

from lcirc_fast.cli import main
from lcirc_fast.errors import DataError
from lcirc_fast.eval import compare, ruler
from lcirc_fast.eval import passkey as pk


def _eval(capsys, *argv):
    rc = main(["eval", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err.splitlines()


def _read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_ruler_metrics_follow_ruler_s_definitions():
    # string_match_all: mean over references of [ref.lower() in pred.lower()];
    # string_match_part: max over references of the same. Answer "... 1234567 and 7654321" against
    # refs [1234567, 7654321, 1111111, 2222222]: 2 of 4 found -> all 0.5, part 1.
    refs = ["1234567", "7654321", "1111111", "2222222"]
    pred = "The numbers are 1234567 and 7654321"
    assert ruler.string_match_all(pred, refs) == 0.5 and ruler.string_match_part(pred, refs) == 1.0
    assert ruler.string_match_all("none", refs) == 0.0 and ruler.string_match_part("none", refs) == 0.0
    assert ruler.string_match_all("vars: abcde, FGHIJ", ["ABCDE", "fghij"]) == 1.0     # case ignored
    # post-processing: strip, control characters (\x00-\x1f) to newlines, strip
    assert ruler.postprocess("  \x01 42\tx\x1f ") == "42\nx"
    with pytest.raises(ValueError, match="no references"):
        ruler.string_match_all("x", [])


def test_ruler_cli_writes_predictions_that_give_the_reported_scores(tmp_path, capsys, tiny_hf_dirs,
                                                                    no_progress_bars):
    base, lcirc = tiny_hf_dirs
    rc, out, _ = _eval(capsys, "ruler", "--base", base, "--lcirc", lcirc, "--window", "48", "--max-new-tokens",
                       "6", "--samples", "2", "--lengths", "120", "--tasks", "niah_single,vt", "--segment-len",
                       "32", "--out", str(tmp_path / "r"))
    assert rc == 0 and "string_match_all" in out
    res = json.loads((tmp_path / "r" / "ruler.json").read_text())
    recs = _read(tmp_path / "r" / "predictions.jsonl")
    # default modes of a QD model: the truncated base, its own memory and the swapped control
    assert {r["mode"] for r in recs} == {"base", "qd", "qd_swapped"} and len(recs) == 2 * 3 * 2
    assert all(isinstance(r["answer"], str) for r in recs)
    assert ruler.rows_from_predictions(recs) == res["rows"]
    sw = [r for r in recs if r["mode"] == "qd_swapped"]
    own = [r for r in recs if r["mode"] == "qd"]
    assert [r["memory_references"] for r in sw] == [own[1]["references"], own[0]["references"],
                                                    own[3]["references"], own[2]["references"]]
    assert all("partner_score" in r for r in res["rows"] if r["mode"] == "qd_swapped")


def test_passkey_cli_predictions_give_the_reported_scores(tmp_path, capsys, tiny_hf_dirs, no_progress_bars):
    base, lcirc = tiny_hf_dirs
    rc, out, _ = _eval(capsys, "passkey", "--base", base, "--lcirc", lcirc, "--window", "48", "--samples", "2",
                       "--lengths", "100", "--depths", "0.2,0.8", "--segment-len", "32", "--out", str(tmp_path))
    assert rc == 0 and out.startswith("accuracy is strict")
    res = json.loads((tmp_path / "passkey.json").read_text())
    recs = _read(tmp_path / "predictions.jsonl")
    assert len(recs) == 2 * 2 * 2 and {"key", "mode", "length", "depth", "answer"} <= set(recs[0])
    assert pk.rows_from_predictions(recs) == res["rows"]
    assert pk.by_length(pk.rows_from_predictions(recs)) == res["by_length"]


def _records(mode, scores, task="niah_single", length=512):
    """Records whose answers score `scores` (1: the reference, 0: nothing) under string_match_all."""
    return [{"benchmark": "ruler", "task": task, "mode": mode, "length": length, "index": i,
             "references": [f"{1000000 + i}"], "answer": f"{1000000 + i}" if s else "no"}
            for i, s in enumerate(scores)]


def test_paired_statistics_by_hand():
    # pairs (a, b): (0,1) (0,1) (1,1) (1,0): differences 1, 1, 0, -1; mean 0.25;
    # sample variance ((0.75^2 * 2) + 0.25^2 + 1.25^2) / 3 = (1.125 + 0.0625 + 1.5625) / 3 = 0.91667;
    # se = sqrt(0.91667 / 4) = 0.47871; ci95 = 0.25 -+ 1.96 * 0.47871.
    st = compare.paired_stats([(0, 1), (0, 1), (1, 1), (1, 0)])
    se = math.sqrt((0.75 ** 2 * 2 + 0.25 ** 2 + 1.25 ** 2) / 3 / 4)
    assert st["diff"] == pytest.approx(0.25) and st["se"] == pytest.approx(se)
    assert (st["ci95_low"], st["ci95_high"]) == (pytest.approx(0.25 - 1.96 * se), pytest.approx(0.25 + 1.96 * se))
    assert (st["mean_a"], st["mean_b"], st["b_better"], st["a_better"]) == (0.5, 0.75, 2, 1)
    assert math.isnan(compare.paired_stats([(0, 1)])["se"])


def _jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


def test_compare_cli_pairs_samples_of_two_files(tmp_path, capsys):
    a = _jsonl(tmp_path / "a.jsonl", _records("base", [1, 1, 1, 1]) + _records("lcirc", [0, 0, 1, 1]))
    b = _jsonl(tmp_path / "b.jsonl", _records("base", [1, 1, 1, 1]) + _records("qd", [1, 1, 1, 0])
               + _records("qd_swapped", [0, 0, 0, 0]))
    rc, out, err = _eval(capsys, "compare", "--data", f"{a},{b}", "--out", str(tmp_path / "c"))
    assert rc == 0 and "A = " in out
    res = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert (res["meta"]["mode_a"], res["meta"]["mode_b"]) == ("lcirc", "qd")     # the model modes, found
    row = res["rows"][0]
    assert (row["task"], row["length"], row["n"]) == ("niah_single", 512, 4)
    assert row["diff"] == pytest.approx(0.25) and row["b_better"] == 2 and row["a_better"] == 1
    assert res["rows"][-1]["task"] == "all"
    # the same files, the modes named: the base against itself differs by nothing
    rc, out, _ = _eval(capsys, "compare", "--data", f"{a},{b}", "--modes", "base,base", "--out", str(tmp_path / "d"))
    assert rc == 0 and json.loads((tmp_path / "d" / "compare.json").read_text())["rows"][0]["diff"] == 0.0


def test_compare_refuses_files_of_other_samples(tmp_path, capsys):
    a = _jsonl(tmp_path / "a.jsonl", _records("lcirc", [1, 0]))
    other = [{**r, "references": ["9"]} for r in _records("qd", [1, 0])]
    b = _jsonl(tmp_path / "b.jsonl", other)
    rc, out, err = _eval(capsys, "compare", "--data", f"{a},{b}", "--out", str(tmp_path / "c"))
    assert rc == 2 and len(err) == 1 and "differ in the gold answer" in err[0] and "--seed" in err[0]
    short = _jsonl(tmp_path / "s.jsonl", _records("qd", [1]))
    rc, _, err = _eval(capsys, "compare", "--data", f"{a},{short}", "--out", str(tmp_path / "c"))
    assert rc == 2 and "do not hold the same samples" in err[0]
    rc, _, err = _eval(capsys, "compare", "--data", a, "--out", str(tmp_path / "c"))
    assert rc == 2 and "two files" in err[0]
    two = _jsonl(tmp_path / "two.jsonl", _records("lcirc", [1, 0]) + _records("qd", [1, 0]))
    with pytest.raises(DataError, match="several model modes among lcirc, qd"):
        compare.compare_files(two, a)
    bad = _jsonl(tmp_path / "bad.jsonl", [{"mode": "qd"}])
    with pytest.raises(DataError, match="line 1: 'benchmark' is None"):
        compare.compare_files(bad, a)


@pytest.mark.parametrize("argv, says", [
    (["--tasks", "niah_nope"], "--tasks niah_nope: not RULER task(s)"),
    (["--samples", "1"], "ruler's default modes include the swapped-memory control"),
    (["--window", "64"], "--window 64 leaves no room for a prompt with --max-new-tokens 128"),
])
def test_ruler_bad_arguments(tmp_path, capsys, argv, says):
    rc, out, err = _eval(capsys, "ruler", "--base", "tiny_random", "--out", str(tmp_path / "o"), *argv)
    assert (rc, out) == (2, "") and len(err) == 1 and says in err[0]
