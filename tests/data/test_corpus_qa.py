import random

import pytest
import torch

from lcirc_fast.data import (
    SyntheticQA,
    build_qa_sample,
    chunk_documents,
    get_template,
    kjv_splits,
    prepare_training,
    query_text,
    split_by_name,
    tokenize_documents,
)
from lcirc_fast.data.loaders import load_longbench, load_qa_records, load_text_documents, load_token_documents
from lcirc_fast.data.tokenized import encode


def test_kjv_split_by_book_no_leakage():
    s = kjv_splits()
    names = {k: {n for n, _ in v} for k, v in s.items()}
    assert sum(len(v) for v in names.values()) == 66
    assert not names["train"] & names["validation"]
    assert not names["train"] & names["test"]
    assert not names["validation"] & names["test"]
    assert len(names["test"]) == 7 and len(names["validation"]) == 7
    # held-out books are not in the training text (the Bible itself repeats a few verses
    # across books, so count verbatim long lines rather than demanding none)
    train_lines = {ln for _, t in s["train"] for ln in t.split("\n")}
    for _, text in s["test"]:
        lines = [ln for ln in text.split("\n") if len(ln) > 80]
        assert lines and sum(ln in train_lines for ln in lines) < 0.2 * len(lines)
    assert kjv_splits() == s  # deterministic


def test_split_errors():
    with pytest.raises(ValueError, match="unique"):
        split_by_name([("a", "x"), ("a", "y"), ("b", "z")])
    with pytest.raises(ValueError, match="too few"):
        split_by_name([("a", "x"), ("b", "y")], 0.4, 0.4)


def test_tokenize_cache_roundtrip(sp_tok, tmp_path):
    texts = ["In the beginning", "God created the heaven and the earth."]
    a = tokenize_documents(texts, sp_tok, tmp_path)
    assert len(list(tmp_path.glob("tok-*.pt"))) == 1
    b = tokenize_documents(texts, sp_tok, tmp_path)
    assert all(torch.equal(x, y) and y.dtype == torch.long for x, y in zip(a, b))
    assert sp_tok.decode(a[1]) == texts[1]
    c = tokenize_documents(texts[:1], sp_tok, tmp_path)
    assert len(c) == 1 and len(list(tmp_path.glob("tok-*.pt"))) == 2
    assert [p.numel() for p in chunk_documents([torch.arange(10)], 4, min_tokens=3)] == [4, 4]


def test_qa_sample_labels_query(sp_tok):
    ctx = torch.tensor(sp_tok("Some context text here.", add_special_tokens=False).input_ids)
    t = get_template("read_answer")
    s = build_qa_sample(sp_tok, ctx, "What is it?", "a lamp", t)
    assert s.input_ids[0] == sp_tok.bos_token_id
    ans = s.labels[s.labels != -100]
    assert sp_tok.decode(ans, skip_special_tokens=True).strip() == "a lamp"
    assert ans[-1] == sp_tok.eos_token_id and (ans == sp_tok.eos_token_id).sum() == 1   # the answer closes
    assert torch.equal(s.labels[s.prompt_len:], s.input_ids[s.prompt_len:])
    assert (s.labels[:s.prompt_len] == -100).all()
    q = sp_tok.decode(s.query_ids)
    assert q.startswith("Question: What is it?") and q.endswith("Answer:") and "lamp" not in q
    assert s.query_ids[0] != sp_tok.bos_token_id
    # short prompt: unchanged; long: head+tail with labels intact
    ht, lab = prepare_training(s, 4096)
    assert torch.equal(ht.llm_ids, s.input_ids) and torch.equal(lab, s.labels)
    assert query_text("x Question: a Question: b") == "Question: b"


def test_synthetic_tasks(sp_tok):
    docs = [(f"Book{i}", torch.randint(100, 30000, (3000,))) for i in range(6)]
    qa = SyntheticQA(sp_tok, docs)
    rng = random.Random(0)
    for task in SyntheticQA.TASKS:
        s = qa.sample(rng, 1000, task=task, depth=0.5)
        assert s.task == task and 1000 < s.prompt_len < 1300
        text = sp_tok.decode(s.prompt_ids)
        if task == "passkey":
            assert f"The pass key is {s.answer}." in text
            assert len(s.answer) == 5 and s.answer.isdigit()
        if task == "fact":
            assert f"was named {s.answer}." in text
        ht, lab = prepare_training(s, 256)
        assert ht.truncated and ht.llm_ids.numel() == 256
        assert sp_tok.decode(lab[lab != -100], skip_special_tokens=True).strip() == s.answer
    mc = qa.book(rng, 800, template=get_template("mc_letter"))
    assert mc.answer in ("A.", "B.", "C.", "D.")
    letter = mc.answer[0]
    text = sp_tok.decode(mc.prompt_ids)
    gold_line = [ln for ln in text.split("\n") if ln.startswith(f"{letter}. ")][0]
    assert f"From the book of {gold_line[3:]}:" in text
    with pytest.raises(ValueError, match="tasks"):
        SyntheticQA(sp_tok, docs, tasks=["nope"])


def _find(seq: list[int], sub: list[int]) -> list[int]:
    k = len(sub)
    return [i for i in range(len(seq) - k + 1) if seq[i:i + k] == sub]


@pytest.mark.parametrize("task", ["passkey", "fact"])
def test_needle_in_middle_lies_wholly_in_the_compressed_middle(sp_tok, task):
    docs = [(f"Book{i}", torch.randint(100, 30000, (3000,))) for i in range(6)]
    w = 96
    qa = SyntheticQA(sp_tok, docs, tasks=[task], needle_window=w)
    free = SyntheticQA(sp_tok, docs, tasks=[task])
    rng = random.Random(1)
    head, tail = w // 2, w - w // 2
    starts = []
    for i in range(40):
        s = qa.sample(rng, 160)               # random template and depth
        ht, lab = prepare_training(s, w)
        ids = s.input_ids.tolist()
        sentence = (f"The pass key is {s.answer}. Remember it. {s.answer} is the pass key."
                    if task == "passkey" else f"was named {s.answer}.")
        needle = sp_tok(sentence, add_special_tokens=False).input_ids[1:]   # drop the word-start piece
        at = _find(ids, needle)
        assert len(at) == 1, (i, sp_tok.decode(s.input_ids))
        assert at[0] >= head and at[0] + len(needle) <= len(ids) - tail
        assert ht.truncated and _find(ht.middle.tolist(), needle)
        assert not _find(ht.llm_ids.tolist(), needle[-4:])
        assert sp_tok.decode(lab[lab != -100], skip_special_tokens=True).strip() == s.answer
        starts.append(at[0])
    assert len(set(starts)) > 10                 # the depth still varies within the middle
    # depth 0 / 1: the first / last position where the whole needle is compressed
    for depth in (0.0, 1.0):
        s = qa.sample(random.Random(5), 160, depth=depth, template=get_template("passage_only"))
        ids = s.input_ids.tolist()
        first = encode(sp_tok, "The pass key is" if task == "passkey" else "The keeper of the").tolist()
        last = encode(sp_tok, "is the pass key." if task == "passkey" else f"was named {s.answer}.").tolist()
        start, end = _find(ids, first)[0], _find(ids, last)[-1] + len(last)
        assert (start == head) if depth == 0.0 else (end == len(ids) - tail)
    # the same draw without the option may leave the needle in the head or tail
    misses = 0
    for _ in range(40):
        s = free.sample(rng, 160)
        ht, _ = prepare_training(s, w)
        misses += not _find(ht.middle.tolist(), sp_tok(str(s.answer), add_special_tokens=False).input_ids[1:])
    assert misses > 0


def test_needle_in_middle_errors(sp_tok):
    docs = [(f"Book{i}", torch.randint(100, 30000, (3000,))) for i in range(6)]
    with pytest.raises(ValueError, match="book"):
        SyntheticQA(sp_tok, docs, needle_window=96)
    with pytest.raises(ValueError, match="needle_window"):
        SyntheticQA(sp_tok, docs, tasks=["passkey"], needle_window=0)
    qa = SyntheticQA(sp_tok, docs, tasks=["passkey"], needle_window=96)
    with pytest.raises(ValueError, match="fits the 96-token window"):
        qa.sample(random.Random(0), 20)
    with pytest.raises(ValueError, match="does not fit"):
        qa.sample(random.Random(0), 30)
    with pytest.raises(ValueError, match="haystack"):
        qa.sample(random.Random(0), 0)
    with pytest.raises(ValueError, match="depth"):
        qa.sample(random.Random(0), 200, depth=1.5)


def test_loaders(tmp_path):
    import json

    import pandas as pd

    p = tmp_path / "docs.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"doc {i}", "input_ids": [1, 2, i]}) for i in range(3)))
    assert load_text_documents(p) == ["doc 0", "doc 1", "doc 2"]
    assert [t.tolist() for t in load_token_documents(p)][2] == [1, 2, 2]
    (tmp_path / "a.txt").write_text("line one\nline two\n")
    assert load_text_documents(tmp_path / "a.txt") == ["line one\nline two\n"]
    q = tmp_path / "qa.parquet"
    pd.DataFrame({"context": ["c"], "question": ["q?"], "answer": ["a"]}).to_parquet(q)
    assert load_qa_records(q) == [{"context": "c", "question": "q?", "answer": "a"}]
    lb = tmp_path / "lb.jsonl"
    lb.write_text(json.dumps({"input": "q", "context": "c", "answers": ["x", "y"], "_id": "7"}))
    assert load_longbench(lb)[0]["answers"] == ["x", "y"]
    with pytest.raises(KeyError, match="nope"):
        load_text_documents(p, field="nope")
    with pytest.raises(FileNotFoundError):
        load_text_documents(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="format"):
        (tmp_path / "x.csv").write_text("a")
        load_text_documents(tmp_path / "x.csv")
