"""InfiniteBench's per-sample scores on crafted predictions, worked out from its metric definitions."""
import pytest

from lcirc_fast.eval import infinitebench as ib

OPTIONS = ["red", "blue", "green", "gray"]


def test_qa_f1_max_over_answers_and_paper_names():
    assert ib.score("En.QA", "The cat sat on a mat.", ["dog", "a cat on the mat"]) == pytest.approx(
        2 * (3 / 4) * (3 / 3) / (3 / 4 + 3 / 3))
    assert ib.score("longbook_qa_eng", "dog", ["cat"]) == 0.0


def test_chinese_qa_f1_counts_characters():
    assert ib.score("Zh.QA", "北京天安门", ["天安门"]) == pytest.approx(2 * (3 / 5) * 1 / (3 / 5 + 1))


@pytest.mark.parametrize("pred, want", [
    ("B. blue", 1.0), ("blue", 1.0), ("The answer is: B", 1.0), ("C", 0.0), ("", 0.0),
    ("I think so", 0.0), ("well\nmaybe B then", 1.0), ("Answer is: blue", 0.0), ("so the answer is: blue", 1.0),
     ("the answer is:", 0.0),
])
def test_multiple_choice_option_parsing(pred, want):
    assert ib.score("En.MC", pred, ["blue"], OPTIONS) == want


def test_multiple_choice_answer_forms():
    assert ib.choice_label("blue", OPTIONS) == ["blue", "B"]
    assert ib.choice_label(["gray", "D"], OPTIONS) == ["gray", "D"]
    with pytest.raises(ValueError, match="not one of the options"):
        ib.choice_label(["pink"], OPTIONS)
    with pytest.raises(ValueError, match="needs the 4 released options"):
        ib.score("En.MC", "B", ["blue"])


def test_summary_rouge_lsum_of_rouge_score():
    assert ib.score("En.Sum", "the cat sat\non the mat", ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert ib.score("longbook_sum_eng", "the cat", ["the cat sat on the mat"]) == pytest.approx(
        2 * 1 * (2 / 6) / (1 + 2 / 6))


def test_dialogue_checks_the_first_name_among_upper_cased_words():
    assert ib.score("En.Dia", "Ace: hello", ["ACE", "ACE ROTHSTEIN"]) == 1.0
    assert ib.score("En.Dia", "Rothstein", ["ACE", "ACE ROTHSTEIN"]) == 0.0


def test_retrieval_tasks():
    assert ib.score("Retrieve.PassKey", "71432.", ["71432"]) == 1.0
    assert ib.score("passkey", "The key is 7143 2", ["71432"]) == 0.0
    assert ib.score("Retrieve.Number", "3000077442 is the sequence", ["3000077442"]) == 1.0
    assert ib.score("Retrieve.KV", 'The value is "5e6b-710d".', ["5e6b-710d"]) == 1.0
    assert ib.score("kv_retrieval", "5e6b", "5e6b-710d") == 0.0


def test_code_debug():
    opts = ["f_a", "f_b", "f_c", "f_d"]
    assert ib.score("Code.Debug", "C. f_c", ["f_c"], opts) == 1.0
    assert ib.score("code_debug", "The correct option is: f_c", ["f_c"], opts) == 1.0
    assert ib.score("code_debug", "The correct option is: f_a", ["f_c"], opts) == 0.0
    assert ib.score("code_debug", "A", ["f_c"], opts) == 0.0


def test_math_find_first_number():
    assert ib.score("Math.Find", "88", [88]) == 1.0
    assert ib.score("math_find", "it is 8.5 or 8", [8]) == 0.0
    assert ib.score("math_find", "about 2.5", [2.5]) == 1.0
    assert ib.score("math_find", "none", [3]) == 0.0
    with pytest.raises(ValueError, match="must be a number"):
        ib.score("math_find", "3", ["3"])


def test_unknown_task():
    with pytest.raises(KeyError, match="unknown InfiniteBench task 'En.XX'"):
        ib.score("En.XX", "a", ["a"])


def test_samples_follow_the_templates():
    row = {"id": 7, "context": "BOOK", "input": "Who?", "answer": ["blue"], "options": OPTIONS}
    mc = ib.make_sample("longbook_choice_eng", row)
    assert mc.prompt == ib.PROMPTS["longbook_choice_eng"].format(
        context="BOOK", question="Who?", OPTION_A="red", OPTION_B="blue", OPTION_C="green", OPTION_D="gray")
    assert mc.query.startswith("Question: Who?\nA. red") and mc.max_new_tokens == 40 and mc.id == "7"
    pk = ib.make_sample("passkey", {**row, "input": "What is the pass key?"})
    assert pk.query == "\n\nWhat is the pass key?\n\nThe pass key is" and pk.max_new_tokens == 6
    mf = ib.make_sample("math_find", {**row, "input": "The largest number of the list is"})
    assert mf.before == "What is the largest number in the following list?\n\n"
