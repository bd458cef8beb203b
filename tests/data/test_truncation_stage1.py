import pytest
import torch

from lcirc_fast.data import head_tail, pad_batch, stage1_steps, stage1_stream, truncate_with_labels
from lcirc_fast.data.stage1 import draw_boundaries


@pytest.mark.parametrize("n", [1, 5, 50, 99, 100])
def test_short_prompt_unchanged(n):
    ids = torch.arange(n)
    ht = head_tail(ids, 100)
    assert not ht.truncated and ht.middle is None
    assert torch.equal(ht.llm_ids, ids)  # no duplication of any token


@pytest.mark.parametrize("n,w", [(101, 100), (1000, 100), (1000, 101), (257, 256)])
def test_long_prompt_head_tail_middle_partition(n, w):
    ids = torch.arange(n)
    ht = head_tail(ids, w)
    assert ht.llm_ids.numel() == w
    assert ht.head_len == w // 2
    # head ++ middle ++ tail is the prompt exactly: every token once
    tail = ht.llm_ids[ht.head_len:]
    assert torch.equal(torch.cat([ht.llm_ids[:ht.head_len], ht.middle, tail]), ids)
    assert tail[-1] == n - 1


def test_truncate_with_labels_keeps_answer_and_rejects_long_answers():
    ids = torch.arange(300)
    labels = torch.full_like(ids, -100)
    labels[-5:] = ids[-5:]
    ht, lab = truncate_with_labels(ids, labels, 64)
    assert torch.equal(lab[-5:], ids[-5:]) and int((lab != -100).sum()) == 5
    labels[-40:] = ids[-40:]  # tail is 32 tokens: the answer would be cut
    with pytest.raises(ValueError, match="answer"):
        truncate_with_labels(ids, labels, 64)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="window"):
        head_tail(torch.arange(10), 1)
    with pytest.raises(ValueError, match="empty"):
        head_tail(torch.arange(0), 8)
    with pytest.raises(ValueError, match="1-D"):
        head_tail(torch.zeros(2, 3, dtype=torch.long), 8)


def test_stage1_steps_windows_follow_compressed_prefix():
    ids = torch.arange(100)
    b = [0, 10, 30, 60, 100]
    steps = stage1_steps(ids, b, window=25)
    assert [s.step for s in steps] == [0, 1, 2]  # last segment never compressed
    for s, lo, hi in zip(steps, b, b[1:]):
        assert torch.equal(s.segment, ids[lo:hi])
        assert s.window[0] == hi and s.window.numel() == min(25, 100 - hi)


def test_stage1_short_documents_contribute_nothing():
    assert stage1_steps(torch.arange(50), [0, 50], 16) == []
    assert len(stage1_steps(torch.arange(50), [0, 20, 50], 16)) == 1
    with pytest.raises(ValueError, match="boundaries"):
        stage1_steps(torch.arange(50), [0, 20, 40], 16)


def test_stage1_stream_reproducible_and_sharded():
    docs = [torch.arange(i * 1000, i * 1000 + 300) for i in range(6)]
    take = lambda g, shard: [s for _, s in zip(range(30), stage1_stream(  # noqa: E731
        docs, 32, g, "random", min_len=16, max_len=64, shard=shard))]
    a = take(torch.Generator().manual_seed(1), (0, 1))
    b = take(torch.Generator().manual_seed(1), (0, 1))
    assert all(torch.equal(x.segment, y.segment) and torch.equal(x.window, y.window)
               for x, y in zip(a, b))
    r0 = take(torch.Generator().manual_seed(1), (0, 2))
    r1 = take(torch.Generator().manual_seed(1), (1, 2))
    first_epoch_docs0 = {s.doc for s in r0[:5]}
    first_epoch_docs1 = {s.doc for s in r1[:5]}
    assert not first_epoch_docs0 & first_epoch_docs1  # ranks read different documents
    for s in a:
        assert 16 <= s.segment.numel() <= 64 or s.segment.numel() < 16


def test_draw_boundaries_modes():
    assert draw_boundaries(100, "fixed", segment_len=30) == [0, 30, 60, 90, 100]
    g = torch.Generator().manual_seed(0)
    b = draw_boundaries(10_000, "random", g, min_len=64, max_len=256)
    lens = [y - x for x, y in zip(b, b[1:])]
    assert all(64 <= x <= 256 for x in lens[:-1]) and sum(lens) == 10_000
    with pytest.raises(ValueError, match="segmenting"):
        draw_boundaries(100, "nope")


def test_pad_batch():
    ids, mask, lab = pad_batch([torch.tensor([5, 6, 7]), torch.tensor([8])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert lab.tolist() == [[5, 6, 7], [8, -100, -100]]
    with pytest.raises(ValueError):
        pad_batch([], 0)


def test_balanced_boundaries_for_training_documents():
    assert draw_boundaries(100, "balanced", segment_len=32) == [0, 34, 67, 100]
    assert draw_boundaries(5, "balanced", segment_len=32) == [0, 5]
    with pytest.raises(ValueError, match="balanced"):
        draw_boundaries(100, "even")
