"""`lcirc eval {longbench,infinitebench,leval}` on small files in each benchmark's released layout:
per-task and average tables, predictions, scores recomputed from the predictions, bad input."""
import json
import math
from pathlib import Path

import pytest

from lcirc_fast.cli import main
from lcirc_fast.eval import infinitebench, leval, longbench

FIXTURES = Path(__file__).parent / "fixtures"

SCORERS = {
    "longbench": lambda p: longbench.score(p["task"].removesuffix("_e"), p["prediction"], p["answers"],
                                           ["Location", "Human being", "Number", "Description"]),
    "infinitebench": lambda p: infinitebench.score(p["task"], p["prediction"], p["answers"],
                                                   ["red", "blue", "green", "gray"]),
    "leval": lambda p: leval.score(p["task"], p["prediction"], p["answers"]),
}


def _eval(capsys, *argv):
    rc = main(["eval", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err.splitlines()


@pytest.mark.parametrize("bench, tasks, per_task", [
    ("longbench", {"hotpotqa": 2, "trec_e": 2}, None),
    ("infinitebench", {"longbook_qa_eng": 2, "longbook_choice_eng": 1}, None),
    ("leval", {"quality": 2, "narrative_qa": 2}, {"narrative_qa": 1}),
])
def test_benchmark_run_writes_tables_and_predictions(tmp_path, capsys, tiny_hf_dirs, bench, tasks, per_task):
    base, lcirc = tiny_hf_dirs
    out = tmp_path / "out"
    rc, stdout, _ = _eval(capsys, bench, "--base", base, "--lcirc", lcirc, "--data", str(FIXTURES / bench),
                          "--modes", "base,qd", "--window", "64", "--max-new-tokens", "3", "--segment-len", "32",
                          "--out", str(out))
    assert rc == 0
    res = json.loads((out / f"{bench}.json").read_text())
    assert {(r["task"], r["mode"]): r["n"] for r in res["rows"]} == {
        (t, m): n for t, n in tasks.items() for m in ("base", "qd")}
    assert res["failures"] == [] and res["problems"] == []
    assert res["meta"]["excluded_rows"] == {t: (per_task or {}).get(t, 0) for t in tasks}
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 2 * sum(tasks.values())
    for r in res["rows"]:
        mine = [p for p in preds if p["task"] == r["task"] and p["mode"] == r["mode"]]
        assert [p["score"] for p in mine] == [SCORERS[bench](p) for p in mine]
        assert r["score"] == pytest.approx(100 * sum(p["score"] for p in mine) / len(mine))
    for a in res["average"]:
        rows = [r for r in res["rows"] if r["mode"] == a["mode"]]
        assert a["score"] == pytest.approx(sum(r["score"] for r in rows) / len(rows))
        assert a["tasks"] == len(tasks)
    md = (out / f"{bench}.md").read_text()
    assert "| task | mode | n | failed | score |" in md and "average over tasks:" in md
    if bench == "longbench":
        trec = next(r for r in res["rows"] if r["task"] == "trec_e" and r["mode"] == "base")
        bucket = {p["id"]: p["score"] for p in preds if p["task"] == "trec_e" and p["mode"] == "base"}
        assert trec["0-4k"] == pytest.approx(100 * bucket["t1"])
        assert trec["8k+"] == pytest.approx(100 * bucket["t2"]) and math.isnan(trec["4-8k"])


def test_tasks_select_files_and_paper_names(tmp_path, capsys, tiny_hf_dirs):
    base, _ = tiny_hf_dirs
    out = tmp_path / "out"
    rc, _, _ = _eval(capsys, "infinitebench", "--base", base, "--data", str(FIXTURES / "infinitebench"),
                     "--tasks", "En.MC", "--window", "64", "--max-new-tokens", "2", "--out", str(out))
    assert rc == 0
    res = json.loads((out / "infinitebench.json").read_text())
    assert [(r["task"], r["mode"], r["n"]) for r in res["rows"]] == [("longbook_choice_eng", "base", 1)]


def test_files_given_one_by_one(tmp_path, capsys, tiny_hf_dirs):
    base, _ = tiny_hf_dirs
    out = tmp_path / "out"
    files = f"{FIXTURES / 'leval' / 'Open-ended-tasks' / 'narrative_qa.jsonl'}"
    rc, _, _ = _eval(capsys, "leval", "--base", base, "--data", files, "--window", "64", "--max-new-tokens", "2",
                     "--out", str(out))
    assert rc == 0
    assert [r["task"] for r in json.loads((out / "leval.json").read_text())["rows"]] == ["narrative_qa"]


def test_every_sample_failing_exits_1(tmp_path, capsys, tiny_hf_dirs, no_progress_bars):
    base, _ = tiny_hf_dirs
    out = tmp_path / "out"
    rc, _, err = _eval(capsys, "longbench", "--base", base, "--data", str(FIXTURES / "longbench"), "--tasks",
                       "hotpotqa", "--modes", "full", "--max-full-tokens", "8", "--window", "64",
                       "--max-new-tokens", "2", "--out", str(out))
    assert rc == 1 and len(err) == 1
    assert err[0].startswith("lcirc eval: longbench failed: every sample of mode full failed (2 of 2)")
    res = json.loads((out / "longbench.json").read_text())
    assert [(r["task"], r["failed"]) for r in res["rows"]] == [("hotpotqa", 2)]
    assert {f["id"] for f in res["failures"]} == {"hq1", "hq2"}


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("bench, name, rows, says", [
    ("longbench", "trec.jsonl", [{"input": "q", "context": "c", "answers": ["x"], "_id": "a"}],
     "line 1 (id 'a'): 'all_classes' is missing or empty, and trec is scored against it"),
    ("longbench", "hotpotqa_e.jsonl", [{"input": "q", "context": "c", "answers": ["x"], "length": "9"}],
     "line 1: 'length' is not an integer (LongBench-E buckets samples by it)"),
    ("infinitebench", "longbook_choice_eng.jsonl",
     [{"id": 3, "context": "c", "input": "q", "answer": ["pink"], "options": ["a", "b", "c", "d"]}],
     "line 1 (id 3): answer ['pink'] is not one of the options ['a', 'b', 'c', 'd']"),
    ("infinitebench", "passkey.jsonl", [{"context": "c", "answer": []}],
     "line 1: no 'input' field, 'answer' is missing or empty"),
    ("longbench", "passage_retrieval_en.jsonl", [{"input": "q", "context": "c", "answers": ["3"]}],
     "line 1: an answer names no paragraph (Paragraph (\\d+))"),
    ("infinitebench", "math_find.jsonl", [{"context": "[1, 2]", "input": "Find it.", "answer": [2]}],
     "line 1: 'input' names no 'The ... of' target"),
    ("leval", "tpo.jsonl", [{"input": "d", "instructions": ["q1", "q2"], "outputs": ["A"]}],
     "line 1: 2 instructions but 1 outputs"),
    # issue 23: rows that used to be scored
    ("longbench", "hotpotqa.jsonl", [{"input": "q", "context": "c", "answers": [""], "_id": "a"}],
     "line 1 (id 'a'): 'answers' holds only empty strings (nothing to score against)"),
    ("longbench", "hotpotqa.jsonl", [{"input": "q", "context": "", "answers": ["x"], "_id": "a"}],
     "line 1 (id 'a'): 'context' is empty (every LongBench task reads one)"),
    ("infinitebench", "passkey.jsonl", [{"context": "c", "input": "q", "answer": 1234, "id": 0}],
     "line 1 (id 0): 'answer' 1234 holds a int, not text: passkey answers are a string or a list of strings "
     "(e.g. [\"71432\"])"),
    ("infinitebench", "code_run.jsonl", [{"context": "c", "input": "q", "answer": ["7"], "id": 0}],
     "line 1 (id 0): 'answer' ['7'] is not an integer, 'input' names no func_<n>(<int>) call"),
])
def test_bad_rows_are_named(tmp_path, capsys, bench, name, rows, says):
    p = _jsonl(tmp_path / "data" / name, rows)
    rc, out, err = _eval(capsys, bench, "--base", "tiny_random", "--data", str(tmp_path / "data"),
                         "--out", str(tmp_path / "out"))
    task = name.split(".")[0]
    assert (rc, out) == (2, "")
    assert err == [f"lcirc eval: {p}: 1 of 1 {bench} {task} rows cannot be used: {says}; fix or remove these rows"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, says", [
    (["leval", "--data", str(FIXTURES / "leval"), "--tasks", "quality,nope"],
     "--tasks nope: not leval task(s); known: "),
    (["leval", "--data", str(FIXTURES / "leval"), "--tasks", "tpo"],
     f"--data {FIXTURES / 'leval'}: no file for task(s) tpo (expected tpo.jsonl)"),
    (["infinitebench"], "infinitebench needs --data <directory of its released <task>.jsonl files"),
    (["leval", "--data", str(FIXTURES / "leval"), "--window", "60"],
     "--window 60 leaves no room for a prompt with the 80 answer tokens of quality; use a window of at "
     "least 82 or a smaller --max-new-tokens"),
    (["infinitebench", "--data", str(FIXTURES / "longbench" / "hotpotqa.jsonl")],
     "hotpotqa.jsonl: infinitebench files are named after their tasks (<task>.jsonl); known tasks: passkey,"),
    (["ppl", "--tasks", "x"], "--tasks is for longbench, infinitebench, leval and ruler, not ppl"),
    (["infinitebench", "--data", str(FIXTURES / "infinitebench"), "--tasks", "En.MC,Foo"],
     "--tasks Foo: not infinitebench task(s); known: passkey,"),
])
def test_bad_arguments_in_one_line(tmp_path, capsys, argv, says):
    rc, out, err = _eval(capsys, *argv, "--base", "tiny_random", "--out", str(tmp_path / "out"))
    assert (rc, out, len(err)) == (2, "", 1)
    assert says in err[0]


class _Tok:
    """Whitespace tokenizer: one id per word (its length), BOS 1 when special tokens are added."""
    eos_token_id = 2

    def __call__(self, text, add_special_tokens=True):
        class R:
            input_ids = ([1] if add_special_tokens else []) + [len(w) + 3 for w in text.split()]
        return R()


def test_each_sample_gets_its_prompt_query_and_answer_limit(monkeypatch):
    from lcirc_fast.eval import benchmark_run
    from lcirc_fast.eval.benchmark_files import load_task

    calls = []

    def fake_generate(model, tok, ids, window, new, mode, query, segment_len, max_full):
        calls.append((ids.tolist(), query.tolist(), new, mode, window, segment_len))
        return "\nB\nsecond line"

    monkeypatch.setattr(benchmark_run, "generate_answer", fake_generate)
    samples, excluded = load_task("leval", "quality", str(FIXTURES / "leval" / "Closed-ended-tasks" / "quality.jsonl"))
    tok = _Tok()
    res = benchmark_run.run_benchmark(None, tok, "leval", {"quality": samples}, 4096, ["qd"], segment_len=512)
    assert excluded == 0 and len(calls) == 2
    for s, (ids, query, new, mode, window, seg) in zip(samples, calls):
        head = s.prompt[:len(s.prompt) - len(s.query)]
        assert query == tok(s.query, add_special_tokens=False).input_ids and len(query) > 3
        assert ids == tok(head).input_ids + query and ids[0] == 1
        assert s.query.startswith("Question: Question ") and (new, mode, window, seg) == (80, "qd", 4096, 512)
    assert [r["score"] for r in res["rows"]] == [100 * (1 + 0) / 2]
    benchmark_run.run_benchmark(None, tok, "leval", {"quality": samples}, 4096, ["base"], max_new_tokens=7)
    assert [c[2] for c in calls[2:]] == [7, 7]


def test_postprocessing_per_benchmark():
    from lcirc_fast.eval.benchmark_run import postprocess

    text = "\nfirst\nsecond"
    assert postprocess("longbench", "hotpotqa_e", text) == "first"
    assert postprocess("longbench", "gov_report", text) == text
    assert postprocess("leval", "quality", text) == "first"
    assert postprocess("leval", "gsm100", text) == text
    assert postprocess("infinitebench", "longbook_qa_eng", text) == text


def test_prompt_and_query_are_tokenised_apart_with_a_real_tokenizer():
    from lcirc_fast.assets import llama_sp_tokenizer
    from lcirc_fast.eval import longbench
    from lcirc_fast.eval.benchmark_run import encode_sample

    tok = llama_sp_tokenizer()
    s = longbench.make_sample("hotpotqa", {"input": "Who?", "context": "Text.", "answers": ["x"], "_id": "a"})
    ids, query = encode_sample(tok, s)
    assert query.tolist() == tok(s.query, add_special_tokens=False).input_ids
    assert ids[-len(query):].tolist() == query.tolist() and ids[0].item() == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == s.prompt.replace(" ", "")
