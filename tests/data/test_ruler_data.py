"""RULER's needle tasks as QA samples: RULER's wording, needles where the window cannot read them,
answers that close with EOS."""
import random

import pytest
import torch

from lcirc_fast.data import ruler
from lcirc_fast.data.qa import SyntheticQA, prepare_training

DOCS = [(f"Book{i}", torch.randint(100, 30000, (3000,), generator=torch.Generator().manual_seed(i)))
        for i in range(4)]


def test_singular_wording_follows_ruler():
    # RULER turns its plural template into the singular one when one value is asked for.
    single = ruler.niah_task(random.Random(0), "niah_single")
    assert single.before == ("A special magic number is hidden within the following text. Make sure to memorize it. "
                             "I will quiz you about the number afterwards.\n")
    assert single.after.startswith("\nWhat is the special magic number for ")
    assert single.after.endswith(" mentioned in the provided text is")
    assert len(single.needles) == 1 and len(single.references) == 1
    key = single.after.split(" for ")[1].split(" mentioned")[0]
    assert single.needles[0] == f"One of the special magic numbers for {key} is: {single.references[0]}."
    adj, noun = key.split("-")
    assert adj.isalpha() and noun.isalpha() and len(single.references[0]) == 7


@pytest.mark.parametrize("task, needles, refs", [("niah_multikey", 4, 1), ("niah_multivalue", 4, 4),
                                                 ("niah_multiquery", 4, 4)])
def test_multi_needle_counts(task, needles, refs):
    t = ruler.niah_task(random.Random(1), task)
    assert len(t.needles) == needles and len(t.references) == refs
    assert all(any(r in n for n in t.needles) for r in t.references)      # every answer is planted
    plural = refs > 1
    assert t.before.startswith("Some special magic numbers are" if plural else "A special magic number is")
    if task == "niah_multiquery":
        assert t.after.count(", and ") == 2                                # "a, b, c, and d" (twice)


def test_variable_tracking_chain():
    t = ruler.vt_task(random.Random(2))
    value = t.needles[0].split("= ")[1]
    assert t.needles[0] == f"VAR {t.references[0]} = {value}" and len(value) == 5
    for j in range(1, 5):                                  # each hop names the previous variable
        assert t.needles[j] == f"VAR {t.references[j]} = VAR {t.references[j - 1]} "
    assert f"the value {value} in the text above" in t.after and "5 variables" in t.after


@pytest.mark.parametrize("task", ruler.TASKS)
def test_samples_keep_needles_in_the_compressed_middle_and_end_with_eos(sp_tok, task):
    qa = SyntheticQA(sp_tok, DOCS, tasks=[task], needle_window=96)
    rng = random.Random(3)
    for _ in range(3):
        s = qa.sample(rng, 400)
        assert s.task == task and s.references
        ht, lab = prepare_training(s, 96)
        answer = lab[lab != -100]
        middle = sp_tok.decode(ht.middle)
        window_text = sp_tok.decode(ht.llm_ids[:-answer.numel()])          # the prompt part the LLM reads
        assert all(r in middle for r in s.references)
        assert not any(r in window_text for r in s.references)           # the window cannot read them
        assert answer[-1] == sp_tok.eos_token_id                         # the target closes
        assert sp_tok.decode(answer, skip_special_tokens=True).strip() == ", ".join(s.references)
        assert sp_tok.decode(s.query_ids).startswith(("What", "Question:"))


def test_a_context_too_short_for_the_window_is_refused(sp_tok):
    qa = SyntheticQA(sp_tok, DOCS, tasks=["niah_multivalue"], needle_window=4096)
    with pytest.raises(ValueError, match="fits the 4096-token window"):
        qa.sample(random.Random(0), 100)


def test_eval_samples_have_no_answer_and_are_reproducible(sp_tok):
    qa = SyntheticQA(sp_tok, DOCS, tasks=["niah_single"])
    a = qa.ruler(random.Random(5), 300, "niah_single", with_answer=False, needle_window=80)
    b = qa.ruler(random.Random(5), 300, "niah_single", with_answer=False, needle_window=80)
    assert torch.equal(a.input_ids, b.input_ids) and a.prompt_len == a.input_ids.numel()
    assert (a.labels == -100).all()
