"""Peak memory measured in isolation: never 0 B for a run that allocates."""
import sys

import pytest
import torch

from lcirc_fast.bench import memprobe
from lcirc_fast.bench.presets import get_preset
from lcirc_fast.bench.sweep import SweepOptions

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@linux
def test_peak_rss_growth_sees_a_fresh_allocation():
    got = memprobe.peak_rss_growth(lambda: torch.ones(16 << 20))   # 64 MiB touched
    assert got is not None and got >= 48 << 20


@linux
def test_peak_rss_growth_sees_a_reused_size_again():
    """Freed memory handed back before the reading: the same allocation counts again."""
    first = memprobe.peak_rss_growth(lambda: torch.ones(4 << 20).sum())
    second = memprobe.peak_rss_growth(lambda: torch.ones(4 << 20).sum())
    assert first >= 12 << 20 and second >= 12 << 20


@linux
def test_forked_probe_measures_each_method_in_a_fresh_process():
    opts = SweepOptions(lengths=[80], decode_tokens=2)
    with memprobe.ForkedProbe({"preset": get_preset("tiny"), "opts": opts,
                               "threads": 1}) as probe:
        assert probe.error is None, probe.error
        got = [probe.measure(m, 80) for m in ("full", "lcirc", "train", "full")]
        assert probe.measure("no-such-method", 80) is None
        assert "no-such-method" in probe.error
        assert probe.measure("full", 80) > 0          # still serving after a failure
    assert all(v is not None and v > 0 for v in got), got
    assert not probe.alive
