"""`lcirc eval` on bad input: refused up front with one line naming the problem, and runs whose
results are unusable (every sample failed, NaN) exit non-zero after writing their results."""
import json

import pytest

from lcirc_fast.cli import build_parser, main
from lcirc_fast.cli.eval import result_problems
from lcirc_fast.data.loaders import load_longbench, load_text_documents, read_jsonl
from lcirc_fast.errors import ConfigError, DataError

GOOD = {"input": "Who?", "context": "Some text here.", "answers": ["x"], "_id": "a"}


def _jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _eval(capsys, *argv):
    """(exit status, stdout, stderr lines) of `lcirc eval ...`."""
    rc = main(["eval", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err.splitlines()


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """A tiny random Llama directory with a tokenizer (vocab 32000)."""
    from lcirc_testutils import tiny_llama

    from lcirc_fast.assets import llama_sp_tokenizer

    d = tmp_path_factory.mktemp("base")
    tiny_llama(vocab=32000, hidden=16, layers=1, heads=2, kv_heads=1, ffn=32).save_pretrained(d)
    llama_sp_tokenizer().save_pretrained(d)
    return str(d)


@pytest.fixture
def quiet_loading():
    """No loading progress bars on stderr, so it holds only the command's own lines."""
    import datasets
    from transformers.utils import logging

    logging.disable_progress_bar()
    datasets.disable_progress_bars()
    yield
    logging.enable_progress_bar()
    datasets.enable_progress_bars()


# ------------------------------------------------------------------ loaders


def test_longbench_refuses_unscorable_rows_naming_lines(tmp_path):
    rows = [GOOD,
            {"context": "c", "answers": ["x"], "_id": "no-input"},
            {**GOOD, "_id": "b", "answers": None},
            {**GOOD, "id": "s", "_id": None, "answers": "x"},
            {**GOOD, "_id": "e", "answers": []},
            {**GOOD, "_id": "n", "answers": [1, "x"]},
            {"input": "q", "answers": ["x"], "_id": "no-context"},
            {**GOOD, "_id": "i", "input": None}]
    p = _jsonl(tmp_path / "lb.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_longbench(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: 7 of 8 LongBench rows cannot be used: ")
    assert "line 2 (id 'no-input'): no 'input' field" in msg
    assert "line 3 (id 'b'): 'answers' is null" in msg
    assert "line 4 (id 's'): 'answers' is a str, not a list of strings" in msg
    assert "line 5 (id 'e'): 'answers' is an empty list" in msg
    assert "line 6 (id 'n'): 'answers' holds int items, not only strings" in msg
    assert "and 2 more; fix or remove these rows" in msg      # lines 7 and 8 counted, not listed
    assert "line 7" not in msg and "line 1 " not in msg


def test_longbench_good_rows_keep_ids_and_answers(tmp_path):
    p = _jsonl(tmp_path / "lb.jsonl", [GOOD, "", {**GOOD, "_id": None, "id": 9, "answers": ["y", ""]},
                                       {"input": "", "context": "c", "answers": ["z"]}])
    rows = load_longbench(p)
    assert [(r["id"], r["answers"]) for r in rows] == [("a", ["x"]), ("9", ["y", ""]), ("2", ["z"])]


def test_longbench_parquet_and_json_rows_are_checked_too(tmp_path):
    import pandas as pd

    pq = tmp_path / "lb.parquet"
    pd.DataFrame({"input": ["q", None], "context": ["c", "c"], "answers": [["a"], []],
                  "_id": ["1", "2"]}).to_parquet(pq)
    with pytest.raises(DataError, match=r"lb.parquet: 1 of 2 LongBench rows cannot be used: row 2 \(id '2'\): "
                                        r"'input' is null, 'answers' is an empty list"):
        load_longbench(pq)
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match="cannot read .*broken.parquet as parquet: .*magic bytes"):
        load_longbench(bad)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_data_file_has_no_rows(tmp_path, content):
    p = tmp_path / "lb.jsonl"
    p.write_text(content)
    with pytest.raises(DataError, match=r"lb.jsonl.*has no rows"):
        load_longbench(p)
    with pytest.raises(DataError, match=r"lb.jsonl.*has no rows"):
        load_text_documents(p)


def test_bad_json_lines_are_named_with_the_json_error(tmp_path):
    p = _jsonl(tmp_path / "lb.jsonl", [GOOD, '{"input": oops}', "[1, 2]", GOOD])
    with p.open("ab") as f:
        f.write(b'{"input": "\xff"}\n')
    with pytest.raises(DataError) as e:
        read_jsonl(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: 3 of 5 lines cannot be used: ")
    assert "line 2: not valid JSON (Expecting value at column 11)" in msg
    assert "line 3: a JSON list, not an object {...}" in msg
    assert "line 5: not UTF-8 text" in msg


def test_text_documents_refuse_null_or_missing_text(tmp_path):
    p = _jsonl(tmp_path / "docs.jsonl", [{"text": "a"}, {"text": None}, {"other": 1}, {"text": 5}])
    with pytest.raises(DataError) as e:
        load_text_documents(p)
    assert str(e.value) == (f"{p}: 3 of 4 documents cannot be used: line 2: 'text' is null; "
                            "line 3: no 'text' field; line 4: 'text' is a int, not a string; "
                            "fix or remove these rows")


# ------------------------------------------------------------------ the command line, refused up front


def test_cli_refuses_bad_longbench_rows(tmp_path, capsys):
    p = _jsonl(tmp_path / "lb.jsonl", [GOOD, {"context": "c", "answers": None, "_id": "b"}])
    rc, out, err = _eval(capsys, "longbench", "--base", "tiny_random", "--data", str(p), "--out", str(tmp_path))
    assert rc == 2 and out == ""
    assert err == [f"lcirc eval: {p}: 1 of 2 LongBench rows cannot be used: line 2 (id 'b'): "
                   "no 'input' field, 'answers' is null; fix or remove these rows"]


def test_cli_empty_file_and_bad_json(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    rc, _, err = _eval(capsys, "longbench", "--base", "tiny_random", "--data", str(empty), "--out", str(tmp_path))
    assert rc == 2 and err == [f"lcirc eval: {empty}: the file is empty (has no rows)"]
    bad = _jsonl(tmp_path / "bad.jsonl", [GOOD, "{oops"])
    rc, _, err = _eval(capsys, "ppl", "--base", "tiny_random", "--data", str(bad), "--out", str(tmp_path))
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"lcirc eval: {bad}: 1 of 2 lines cannot be used: line 2: not valid JSON (")


@pytest.mark.parametrize("argv, says", [
    (["ppl", "--docs", "0"], "--docs must be an integer >= 1, got 0"),
    (["passkey", "--samples", "-1"], "--samples must be an integer >= 1, got -1"),
    (["ppl", "--window", "1"], "--window must be an integer >= 2, got 1"),
    (["ppl", "--segment-len", "0"], "--segment-len must be an integer >= 1, got 0"),
    (["passkey", "--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
    (["ppl", "--max-full-tokens", "0"], "--max-full-tokens must be an integer >= 1, got 0"),
    (["ppl", "--multipliers", "1,0"], "--multipliers values must be >= 1, got [0]"),
    (["ppl", "--multipliers", ","], "--multipliers needs at least one value"),
    (["passkey", "--lengths", "0,64"], "--lengths values must be >= 1, got [0]"),
    (["passkey", "--depths", "0.5,1.5"], "--depths must lie in [0, 1], got [1.5]"),
    (["passkey", "--depths", "nan"], "--depths must lie in [0, 1], got [nan]"),
    (["passkey", "--modes", "lcirc,lcirc_swapped", "--samples", "1"],
     "--modes lcirc_swapped answers each sample with another sample's memory: it needs --samples >= 2"),
    (["ppl", "--threads", "0"], "--threads must be an integer >= 1, got 0"),
    (["ppl", "--memory-cap", "-2"], "--memory-cap must be an integer >= -1, got -2"),
    (["longbench", "--window", "40", "--max-new-tokens", "39"],
     "--window 40 leaves no room for a prompt with --max-new-tokens 39; use a window of at least 41"),
    (["ppl", "--modes", "base,full", "--window", "64", "--multipliers", "2,4", "--max-full-tokens", "100"],
     "mode full reads every token, and the shortest length 2 x --window 64 exceeds --max-full-tokens 100"),
    (["ppl", "--base", "no/such/model"], "--base no/such/model: not smollm2-135m, tiny_random or a Hugging Face "
                                         "model directory"),
    (["ppl", "--lcirc", "no/such/dir"], "--lcirc no/such/dir: no such directory; give the best/ or final/ "
                                        "directory that training saved"),
    (["longbench"], "longbench needs --data <LongBench .jsonl, .json or .parquet file>"),
    (["ppl", "--data", "no/such/file.jsonl"], "data files not found: ['no/such/file.jsonl']"),
    (["ppl", "--data", "kjv-tests"], "--data kjv-tests: use kjv-train, kjv-validation or kjv-test"),
])
def test_cli_refuses_bad_arguments_in_one_line(tmp_path, capsys, argv, says):
    base = [] if "--base" in argv else ["--base", "tiny_random"]   # cheap to load, should it get that far
    rc, out, err = _eval(capsys, *argv, *base, "--out", str(tmp_path / "out"))
    assert (rc, out, err) == (2, "", [f"lcirc eval: {says}"])


def test_cli_refuses_unsupported_data_extension(tmp_path, capsys):
    p = tmp_path / "rows.csv"
    p.write_text("input,context\n")
    rc, _, err = _eval(capsys, "longbench", "--base", "tiny_random", "--data", str(p), "--out", str(tmp_path))
    assert rc == 2 and err == [f"lcirc eval: cannot tell the format of {str(p)!r}; use .jsonl, .json, "
                               ".parquet or .txt"]


@pytest.mark.parametrize("flag", ["--lengths", "--multipliers", "--depths"])
def test_cli_list_arguments_name_the_bad_value(capsys, flag):
    assert main(["eval", "passkey", flag, "1,x"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("lcirc eval: ")
    assert f"argument {flag}: expected a comma list of" in err and "got '1,x'" in err


def test_cli_longbench_needs_a_tokenizer(tmp_path, capsys):
    p = _jsonl(tmp_path / "lb.jsonl", [GOOD])
    rc, _, err = _eval(capsys, "longbench", "--base", "tiny_random", "--data", str(p), "--window", "64",
                       "--max-new-tokens", "2", "--out", str(tmp_path / "out"))
    assert rc == 2 and err == ["lcirc eval: longbench needs a base model with a tokenizer; "
                               "--base tiny_random has none"]


# ------------------------------------------------------------------ runs that produce no usable result


def test_cli_longbench_every_sample_failed_exits_1_after_writing_results(tmp_path, capsys, hf_base,
                                                                         quiet_loading):
    p = _jsonl(tmp_path / "lb.jsonl", [GOOD, {**GOOD, "_id": "b"}])
    out = tmp_path / "out"
    rc, stdout, err = _eval(capsys, "longbench", "--base", hf_base, "--data", str(p), "--modes", "base,full",
                            "--max-full-tokens", "12", "--window", "64", "--max-new-tokens", "2",
                            "--out", str(out))
    assert rc == 1 and len(err) == 1
    assert err[0].startswith("lcirc eval: longbench failed: every sample of mode full failed (2 of 2); "
                             "2 failed samples in all, the first: ValueError('full attention over ")
    assert err[0].endswith(f"exceeds max_full_tokens=12'); results in {out}")
    res = json.loads((out / "longbench.json").read_text())
    assert {r["mode"]: r["failed"] for r in res["rows"]} == {"base": 0, "full": 2}
    assert res["problems"] == ["every sample of mode full failed (2 of 2)"]
    assert "run failed:\n  every sample of mode full failed" in (out / "longbench.md").read_text()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2   # the base mode's answers
    assert "Traceback" not in stdout and "run failed:" in stdout


def test_cli_longbench_good_run_exits_0(tmp_path, capsys, hf_base, quiet_loading):
    p = _jsonl(tmp_path / "lb.jsonl", [GOOD, {**GOOD, "_id": "b"}])
    rc, _, err = _eval(capsys, "longbench", "--base", hf_base, "--data", str(p), "--window", "64",
                       "--max-new-tokens", "2", "--out", str(tmp_path / "out"))
    assert rc == 0 and len(err) == 1 and err[0].startswith("wall: ")


def test_cli_ppl_nan_exits_1(tmp_path, capsys, hf_base, quiet_loading):
    doc = tmp_path / "doc.txt"
    doc.write_text("In the beginning God created the heaven and the earth. " * 2)
    out = tmp_path / "out"
    rc, _, err = _eval(capsys, "ppl", "--base", hf_base, "--data", str(doc), "--window", "8",
                       "--multipliers", "1,64", "--out", str(out))
    assert rc == 1 and len(err) == 1
    assert err[0] == ("lcirc eval: ppl failed: ppl is NaN for mode base at length 512 (0 documents scored, "
                      f"0 failed, 1 too short); results in {out}")
    rows = json.loads((out / "ppl.json").read_text())["rows"]
    assert [r["docs"] for r in rows] == [1, 0]


def test_cli_ppl_without_a_long_enough_document(tmp_path, capsys, hf_base, quiet_loading):
    doc = tmp_path / "doc.txt"
    doc.write_text("In the beginning")
    rc, _, err = _eval(capsys, "ppl", "--base", hf_base, "--data", str(doc), "--window", "64",
                       "--out", str(tmp_path / "out"))
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"lcirc eval: --data {doc}: no document has the 64 tokens that --multipliers 1 "
                             "x --window 64 needs (the longest has ")


def test_result_problems_by_task():
    passkey = {"rows": [{"mode": "base", "length": 64, "depth": 0.5, "n": 2, "failed": 0, "accuracy": 0.5,
                         "digit_accuracy": 0.3},
                        {"mode": "qd", "length": 64, "depth": 0.5, "n": 2, "failed": 2, "accuracy": 0.0,
                         "digit_accuracy": 0.0}], "failures": []}
    assert result_problems("passkey", passkey, ["base", "qd"]) == ["every sample of mode qd failed (2 of 2)"]
    lb = {"rows": [{"mode": "base", "n": 3, "failed": 1, "f1": 20.0, "em": float("nan")}], "failures": []}
    assert result_problems("longbench", lb, ["base", "full"]) == ["mode full scored no sample",
                                                                 "em is NaN for mode base"]
    assert result_problems("longbench", {"rows": [{"mode": "base", "n": 3, "failed": 1, "f1": 20.0, "em": 0.0}],
                                         "failures": []}, ["base"]) == []


def test_cli_missing_text_field_names_the_file(tmp_path, capsys):
    p = _jsonl(tmp_path / "docs.jsonl", [{"body": "a"}])
    rc, _, err = _eval(capsys, "ppl", "--base", "tiny_random", "--data", str(p), "--field", "text",
                       "--out", str(tmp_path / "out"))
    assert (rc, err) == (2, [f"lcirc eval: {p}: column 'text' not in the data (columns: ['body'])"])


def test_passkey_full_mode_respects_max_full_tokens():
    import torch
    from lcirc_testutils import tiny_lcirc, tiny_llama

    from lcirc_fast.assets import llama_sp_tokenizer
    from lcirc_fast.eval import passkey_eval

    base = tiny_llama(vocab=32000, hidden=16, layers=1, heads=2, kv_heads=1, ffn=32)
    model = tiny_lcirc(base, num_latents=2, compressor_layers=1, max_segment_len=64, segment_len=32).eval()
    docs = [("d", torch.randint(100, 30000, (300,)))]
    res = passkey_eval(model, llama_sp_tokenizer(), docs, window=64, lengths=[100], depths=[0.5],
                       modes=["full"], samples=2, max_new_tokens=2, max_full_tokens=50)
    assert res["rows"][0]["failed"] == 2
    assert all("exceeds max_full_tokens=50" in f["error"] for f in res["failures"])


def test_cli_out_is_checked_before_reading_and_left_alone_on_failure(tmp_path, capsys):
    as_file = tmp_path / "results.txt"
    as_file.write_text("keep me")
    rc, _, err = _eval(capsys, "ppl", "--base", "tiny_random", "--out", str(as_file))
    assert rc == 2 and err == [f"lcirc eval: --out {as_file} is a file; results go into a directory: "
                               "pass a new or existing directory"]
    assert as_file.read_text() == "keep me"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    fresh = tmp_path / "fresh" / "run"
    rc, _, err = _eval(capsys, "longbench", "--base", "tiny_random", "--data", str(empty), "--out", str(fresh))
    assert rc == 2 and "has no rows" in err[0]
    assert not (tmp_path / "fresh").exists()


def test_hub_failure_is_a_data_error(monkeypatch):
    import datasets

    from lcirc_fast.data.loaders import load_hub
    from lcirc_fast.errors import DataError

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"could not load 'some/set' split 'train' from the hub \(no network\)"):
        load_hub("some/set", "train")


def test_cli_longbench_plain_text_and_no_progress_noise(tmp_path, capsys):
    txt = tmp_path / "rows.txt"
    txt.write_text("hello\n")
    rc, _, err = _eval(capsys, "longbench", "--base", "tiny_random", "--data", str(txt), "--out", str(tmp_path / "o"))
    assert rc == 2 and err == [f"lcirc eval: {txt}: plain text has no fields; rows with fields need "
                               ".jsonl, .json or .parquet files"]
    rc, _, err = _eval(capsys, "ppl", "--base", "tiny_random", "--data", str(tmp_path / "nope.txt"),
                       "--out", str(tmp_path / "o"))
    assert rc == 2 and len(err) == 1
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bin")
    rc, _, err = _eval(capsys, "ppl", "--base", "tiny_random", "--data", str(binary), "--out", str(tmp_path / "o"))
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"lcirc eval: cannot read {binary} as text")


def test_cli_base_prechecks_take_the_canonical_name_and_check_directories(tmp_path):
    from types import SimpleNamespace

    from lcirc_fast.cli.eval import check_args
    from lcirc_fast.cli.train import check_inputs

    no_weights = tmp_path / "model"
    no_weights.mkdir()
    (no_weights / "config.json").write_text('{"model_type": "qwen2"}')
    args = build_parser().parse_args(["eval", "ppl", "--base", "smollm2-135m"])
    check_args(args)
    args = build_parser().parse_args(["eval", "ppl", "--base", str(no_weights)])
    with pytest.raises(ConfigError, match="has a config.json but no weights"):
        check_args(args)
    cfg = SimpleNamespace(base=SimpleNamespace(name="smollm2-135m"), data=SimpleNamespace(source="kjv"),
                          init_from=None, distributed=SimpleNamespace(engine="plain", deepspeed_config=None))
    check_inputs(cfg, SimpleNamespace(threads=None, resume="auto"))
    cfg.base.name = str(no_weights)
    with pytest.raises(ConfigError, match="base.name .* has a config.json but no weights"):
        check_inputs(cfg, SimpleNamespace(threads=None, resume="auto"))
