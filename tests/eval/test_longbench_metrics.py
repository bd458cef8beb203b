"""LongBench's per-sample scores on crafted predictions, worked out from its metric definitions."""
import pytest

from lcirc_fast.eval import longbench as lb


def test_qa_f1_normalises_and_takes_the_best_answer():
    assert lb.score("narrativeqa", "The cat sat on a mat.", ["dog", "a cat on the mat"]) == pytest.approx(
        2 * (3 / 4) * (3 / 3) / (3 / 4 + 3 / 3))
    assert lb.score("hotpotqa", "nothing shared", ["cat"]) == 0.0
    assert lb.score("qasper", "", ["cat"]) == 0.0


def test_qa_f1_keeps_every_line_outside_the_first_line_tasks():
    assert lb.score("musique", "Paris\nFrance", ["France"]) == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))
    assert lb.score("triviaqa", "Paris\nFrance", ["France"]) == 0.0


def test_chinese_qa_f1_uses_jieba_words_without_punctuation():
    assert lb.score("multifieldqa_zh", "北京天安门。", ["天安门"]) == pytest.approx(2 * (1 / 2) * 1 / (1 / 2 + 1))


def test_rouge_l_of_the_rouge_package_counts_distinct_words():
    assert lb.score("gov_report", "the cat sat", ["the cat sat on a mat"]) == pytest.approx(
        2 * 1 * (3 / 6) / (1 + 3 / 6), abs=1e-6)
    assert lb.score("multi_news", "the cat sat", ["the cat sat on the mat"]) == pytest.approx(
        2 * 1 * (3 / 5) / (1 + 3 / 5), abs=1e-6)
    assert lb.score("qmsum", "", ["the cat"]) == 0.0
    assert lb.score("samsum", "Tom is late.\nJane waits.", ["Tom is late."]) == pytest.approx(1.0, abs=1e-6)


def test_chinese_rouge_over_jieba_words():
    assert lb.score("dureader", "我爱北京天安门", ["北京天安门"]) == pytest.approx(
        2 * (2 / 4) * 1 / (2 / 4 + 1), abs=1e-6)


def test_classification_first_line_and_one_over_matches():
    classes = ["Location", "Human being", "Human", "Number"]
    assert lb.score("trec", "\nLocation\nHuman", ["Location"], classes) == 1.0
    assert lb.score("trec", "Location or Human", ["Location"], classes) == 1 / 2
    assert lb.score("trec", "Human being", ["Human being"], classes) == 1.0
    assert lb.score("trec", "Number", ["Location"], classes) == 0.0


def test_classification_keeps_the_name_after_a_struck_one_as_longbench_does():
    assert lb.classification("abc", "abc", ["a", "ab", "abc"]) == 1 / 2
    assert lb.classification("abc", "abc", ["a", "x", "abc"]) == 1.0


def test_classification_needs_the_classes():
    with pytest.raises(ValueError, match="all_classes"):
        lb.score("lsht", "体育", ["体育"])


def test_retrieval_and_count_share_of_numbers():
    assert lb.score("passage_retrieval_en", "Paragraph 3, or Paragraph 7, maybe 3", ["Paragraph 3"]) == 2 / 3
    assert lb.score("passage_retrieval_en", "no idea", ["Paragraph 3"]) == 0.0
    assert lb.score("passage_retrieval_zh", "答案是段落12", ["段落2"]) == 0.0
    assert lb.score("passage_retrieval_zh", "段落2", ["段落2"]) == 1.0
    assert lb.score("passage_count", "There are 5 unique paragraphs out of 12", ["5"]) == 1 / 2
    with pytest.raises(ValueError, match="names no paragraph"):
        lb.score("passage_retrieval_en", "1", ["3"])


def test_code_similarity_first_plain_line_and_fuzz_ratio():
    assert lb.score("lcc", "```python\n# comment\nreturn x + 1\n", ["return x + 1"]) == 1.0
    assert lb.score("repobench-p", "ab", ["abcd"]) == round(100 * 2 * 2 / (2 + 4)) / 100
    assert lb.score("lcc", "# only a comment", ["x"]) == 0.0


def test_length_buckets():
    assert [lb.length_bucket(n) for n in (0, 3999, 4000, 7999, 8000)] == ["0-4k", "0-4k", "4-8k", "4-8k", "8k+"]


def test_unknown_task_and_empty_answers():
    with pytest.raises(KeyError, match="unknown LongBench task 'nqa'"):
        lb.score("nqa", "x", ["x"])
    with pytest.raises(ValueError, match="no gold answers"):
        lb.score("hotpotqa", "x", [])


def test_sample_uses_the_official_prompt_limit_and_question_query():
    row = {"input": "Who?", "context": "Long text.", "answers": ["Ann"], "all_classes": None, "length": 5,
           "_id": "x1"}
    s = lb.make_sample("narrativeqa", row)
    assert s.prompt == lb.PROMPTS["narrativeqa"].format(context="Long text.", input="Who?")
    assert s.query == "Question: Who?\n\nAnswer:"
    assert s.prompt.endswith(s.query) and s.max_new_tokens == 128 and s.id == "x1"
    g = lb.make_sample("gov_report", {**row, "_id": None, "_index": 4})
    assert g.query == "\n\nNow, write a one-page summary of the report.\n\nSummary:" and g.max_new_tokens == 512
    assert g.id == "4"
