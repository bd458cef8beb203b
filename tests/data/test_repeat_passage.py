import pytest
import torch

from lcirc_fast.data import repeat_passage_steps, repeated_passage_docs, stage1_stream
from lcirc_fast.training.config import config_from_dict


def test_repeat_passage_steps_window_is_the_compressed_passage():
    ids = torch.arange(100, 200)
    steps = repeat_passage_steps(ids, [0, 40, 41, 90, 100], window=32, doc=3)
    # the 1-token segment [40:41] has nothing to predict and is skipped
    assert [s.segment.tolist() for s in steps] == [list(range(100, 140)), list(range(141, 190)),
                                                  list(range(190, 200))]
    for s in steps:
        assert s.step == 0 and s.doc == 3  # every passage starts a fresh memory
        n = min(32, s.segment.numel())
        assert torch.equal(s.window, s.segment[:n])
    with pytest.raises(ValueError, match="boundaries"):
        repeat_passage_steps(ids, [0, 50, 50, 100], 32)
    with pytest.raises(ValueError, match="window"):
        repeat_passage_steps(ids, [0, 100], 1)


def test_stream_repeat_passage_default_off_and_on():
    docs = [torch.arange(i * 1000, i * 1000 + 300) for i in range(3)]
    plain = stage1_stream(docs, 16, torch.Generator().manual_seed(0), "random", min_len=20, max_len=40)
    s = next(plain)
    # default: the window follows the segment
    assert int(s.window[0]) == int(s.segment[-1]) + 1
    rep = stage1_stream(docs, 16, torch.Generator().manual_seed(0), "random", min_len=20, max_len=40,
                        repeat_passage=True)
    seen = 0
    for _ in range(40):
        s = next(rep)
        assert s.step == 0 and 2 <= s.segment.numel() <= 40
        assert torch.equal(s.window, s.segment[:16])
        seen += int(s.segment.numel())
    assert seen > 300  # it crossed documents


def test_repeated_passage_docs():
    docs = [torch.arange(10), torch.arange(50, 53), torch.arange(20, 40)]
    out = repeated_passage_docs(docs, 5)
    assert len(out) == 2  # the 3-token document is too short
    assert out[0].tolist() == [0, 1, 2, 3, 4] * 2
    assert out[1].tolist() == [20, 21, 22, 23, 24] * 2
    with pytest.raises(ValueError, match="passage_len"):
        repeated_passage_docs(docs, 1)


def test_config_repeat_passage_only_in_stage_1():
    cfg = config_from_dict({"stage": 1, "data": {"repeat_passage": True}})
    assert cfg.data.repeat_passage
    assert not config_from_dict({"stage": 1}).data.repeat_passage
    with pytest.raises(ValueError, match="repeat_passage"):
        config_from_dict({"stage": 2, "data": {"repeat_passage": True}})
