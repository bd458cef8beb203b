"""L-Eval's per-sample scores on crafted predictions, worked out from its auto_eval definitions."""
import pytest

from lcirc_fast.eval import leval


def test_exam_match_letters_partial_credit_numbers_and_containment():
    assert leval.exam_match("ABC", "ABC") == 1.0
    assert leval.exam_match("AB", "ABC") == 0.25
    assert leval.exam_match("AD", "ABC") == 0.0
    assert leval.exam_match("18.0", "18") == 1.0
    assert leval.exam_match("The first topic is Cooking", "cooking") == 1.0


@pytest.mark.parametrize("task, pred, gold, want", [
    ("coursera", "AC", "ACD", 0.25), ("coursera", "BA", "AB", 1.0), ("coursera", "A, C and D.", "ACD", 1.0),
    ("coursera", "", "A", 0.0), ("quality", "The answer is (B).", "B", 1.0), ("quality", "I'd say D", "B", 0.0),
    ("tpo", "none given", "A", 1.0), ("tpo", "C", "C. because", 1.0),
])
def test_multiple_choice(task, pred, gold, want):
    assert leval.score(task, pred, [gold]) == want


def test_sci_fi_is_the_mean_of_loyalty_and_fact():
    gold = ["True [fact: False]"]
    assert leval.score("sci_fi", "True [fact: False]", gold) == 1.0
    assert leval.score("sci_fi", "True", gold) == (1 + 0) / 2
    assert leval.score("sci_fi", "False [fact: false]", gold) == (0 + 1) / 2
    assert leval.judge_gold("True [fact: False]") == ["true", "false"]


def test_gsm_reads_the_final_number():
    assert leval.score("gsm100", "9 * 2 = 18.\n\nThe answer is 18.", ["18"]) == 1.0
    assert leval.score("gsm100", "so 9 * 2 = 18 dollars", ["18"]) == 1.0
    assert leval.score("gsm100", "The answer is $18.50", ["18"]) == 1.0
    assert leval.score("gsm100", "The answer is 19", ["18"]) == 0.0
    assert leval.math_answer("no digits here") == ""


def test_code_u_compares_the_last_words():
    assert leval.code_gold("[1, 2.0]  'a'") == "[1 2] a"
    assert leval.score("codeU", "The final output is [1, 2]", ["[1, 2]"]) == 1.0
    assert leval.score("codeU", "It prints [1, 3]", ["[1, 2]"]) == 0.0


def test_open_ended_f1_and_rouge():
    assert leval.score("narrative_qa", "a cat", ["the cat sat"]) == pytest.approx(2 * 1 * (1 / 2) / (1 + 1 / 2))
    r1, r2, rl = 2 * 1 * (3 / 6) / (1 + 3 / 6), 2 * 1 * (2 / 5) / (1 + 2 / 5), 2 * 1 * (3 / 6) / (1 + 3 / 6)
    assert leval.rouge_parts("the cat sat", ["the cat sat on the mat"]) == pytest.approx(
        {"rouge1": r1, "rouge2": r2, "rougeL": rl})
    assert leval.score("news_summ", "the cat sat", ["the cat sat on the mat"]) == pytest.approx(rl)
    got = leval.aggregate("news_summ", ["the cat sat", "a dog ran"], [["the cat sat on the mat"], ["a dog ran"]])
    assert got == pytest.approx(100 * ((r1 + 1) / 2 * (r2 + 1) / 2 * (rl + 1) / 2) ** (1 / 3))
    assert leval.aggregate("narrative_qa", ["a cat", "x"], [["the cat sat"], ["y"]]) == pytest.approx(
        100 * (2 * 1 * (1 / 2) / (1 + 1 / 2) + 0) / 2)


def test_unknown_task():
    with pytest.raises(KeyError, match="unknown L-Eval task 'nope'"):
        leval.score("nope", "a", ["a"])


def test_one_line_holds_several_questions():
    row = {"input": "DOC", "instructions": ["Q1?", "Q2?"], "outputs": ["three word answer", "B"], "_index": 0}
    a, b = leval.make_samples("narrative_qa", row)
    assert (a.id, b.id) == ("0:0", "0:1") and a.max_new_tokens == 50
    assert a.prompt == leval_prompt_open("DOC", "Q1?", 3)
    assert a.query == "Instruction: Q1? \nAnswer this question with 3 words."
    (q,) = leval.make_samples("quality", {**row, "instructions": ["Which?"], "outputs": ["B"]})
    assert q.query.startswith("Question: Which?.") and q.prompt.endswith("\nAnswer:") and q.max_new_tokens == 80
    (g,) = leval.make_samples("gsm100", {**row, "instructions": ["Question: 1+1?"], "outputs": ["2"]})
    assert g.prompt == leval.P.SYS_GSM + "\n\nDOC\n\nQuestion: 1+1?" and g.max_new_tokens == 512


def leval_prompt_open(doc, inst, n):
    return (leval.P.SYS_OPEN + "\n\nDocument is as follows. " + doc + " Instruction: " + inst
            + f" \nAnswer this question with {n} words.")


def test_rouge_tasks_score_rouge_l_f_per_sample():
    # L-Eval's leaderboard ROUGE is ROUGE-L F. Derivation by hand: prediction "the cat sat on a mat"
    # (6 tokens), gold "a cat sat on the mat" (6 tokens); their longest common subsequence is
    # "cat sat on mat" (4 tokens), so P = R = 4/6 and F = 2/3. ROUGE-2 differs (bigrams in common:
    # "cat sat", "sat on" = 2 of 5, F = 0.4), so the old geometric mean (2/3 * 2/3 * 0.4)^(1/3)
    # = 0.5623... would fail this.
    for task in leval.ROUGE_TASKS:
        assert leval.score(task, "the cat sat on a mat", ["a cat sat on the mat"]) == pytest.approx(2 / 3)
    # the best gold counts: against "dog" ROUGE-L is 0, against "the cat" it is
    # LCS 2 -> P = 2/6, R = 2/2, F = 2 * (1/3) * 1 / (1/3 + 1) = 0.5
    assert leval.score("gov_report_summ", "the cat sat on a mat", ["dog", "the cat"]) == pytest.approx(0.5)
