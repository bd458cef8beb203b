"""The bench's timing harness: statistics, warm-up, adaptive repeats, interleaving, load."""
import os

import pytest

from lcirc_fast.bench.timing import (
    CpuLoad,
    TimingPolicy,
    Workload,
    choose_threads,
    combine_loads,
    measure,
    physical_cores,
    summarize,
)


class FakeClock:
    """Time advances only when a workload says so."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def work(self, seconds):
        def run(*_):
            self.t += seconds
        return run


def test_summarize_median_range_quartiles_spread():
    st = summarize([3.0, 1.0, 2.0, 10.0])
    assert st["median"] == 2.5 and st["min"] == 1.0 and st["max"] == 10.0 and st["n"] == 4
    assert st["q1"] == pytest.approx(1.75) and st["q3"] == pytest.approx(4.75)
    assert st["spread"] == pytest.approx(9.0 / 2.5)
    assert st["samples"] == [3.0, 1.0, 2.0, 10.0]      # in the order they were taken
    one = summarize([0.5])
    assert one["median"] == one["q1"] == one["q3"] == 0.5 and one["spread"] == 0.0
    with pytest.raises(ValueError):
        summarize([])


def test_policy_repeats_more_when_short_and_bounded():
    p = TimingPolicy(min_repeats=3, max_repeats=20, target_s=1.0)
    assert p.repeats(2.0) == 3            # long run: the minimum
    assert p.repeats(0.1) == 10           # short run: target / estimate
    assert p.repeats(1e-6) == 20          # capped
    assert p.repeats(0.0) == 20
    with pytest.raises(ValueError):
        TimingPolicy(min_repeats=0)
    with pytest.raises(ValueError):
        TimingPolicy(min_repeats=5, max_repeats=4)


def test_measure_warms_up_uncounted_and_interleaves_with_rotation():
    clock = FakeClock()
    calls = []

    def wl(name, secs):
        work = clock.work(secs)

        def run():
            calls.append(name)
            work()
        return Workload(run)

    pol = TimingPolicy(min_repeats=3, max_repeats=8, warmup_s=0.3, target_s=0.5)
    res = measure({"a": wl("a", 0.25), "b": wl("b", 0.125), "c": wl("c", 1.0)}, pol,
                  clock=clock)
    # warm-up: until 0.3 s spent, at least once; sequential, before any timed run
    assert res.warmups == {"a": 2, "b": 3, "c": 1}
    assert calls[:6] == ["a", "a", "b", "b", "b", "c"]
    # repeats: max(3, 0.5 / estimate): a 3, b 4, c 3
    assert {k: len(v) for k, v in res.samples.items()} == {"a": 3, "b": 4, "c": 3}
    assert res.samples["a"] == [0.25] * 3 and res.samples["c"] == [1.0] * 3
    # rounds rotate the order; the extra run of the short workload comes last
    assert res.order == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "b"]
    assert calls[6:] == res.order
    st = res.stats()
    assert st["b"]["median"] == 0.125 and st["b"]["n"] == 4


def test_measure_setup_is_not_timed_and_first_warmup_is_wrapped():
    clock = FakeClock()
    entered = []

    class Around:
        bytes = 123

        def __enter__(self):
            entered.append(clock.t)
            return self

        def __exit__(self, *a):
            return False

    wl = Workload(lambda state: clock.work(state)(), setup=lambda: (clock.work(5.0)(), 0.5)[1])
    res = measure({"x": wl}, TimingPolicy(min_repeats=3, max_repeats=3, warmup_s=0.0),
                  clock=clock, around_first=Around)
    assert res.samples["x"] == [0.5, 0.5, 0.5]     # the 5 s set-up never counts
    assert len(entered) == 1 and res.first_run == {"x": 123}


def test_cpu_load_separates_other_processes_from_ours():
    ticks = iter([(1000, 0), (1200, 20)])          # busy jiffies (incl. steal), steal
    own = iter([500, 560])
    clock = iter([10.0, 11.0])
    with CpuLoad(lambda: next(ticks), lambda: next(own), lambda: next(clock)) as load:
        pass
    hz = os.sysconf("SC_CLK_TCK")
    r = load.result
    assert r["wall_s"] == 1.0
    assert r["busy_cores"] == pytest.approx(200 / hz)
    assert r["own_cores"] == pytest.approx(60 / hz)
    assert r["other_cores"] == pytest.approx(140 / hz)
    assert r["steal_cores"] == pytest.approx(20 / hz)
    both = combine_loads([r, {**r, "wall_s": 3.0, "other_cores": 0.0}])
    assert both["other_cores"] == pytest.approx(140 / hz / 4)
    assert both["max_other_cores"] == pytest.approx(140 / hz)


def test_cpu_load_on_this_machine_counts_our_own_work():
    with CpuLoad() as load:
        x = 0
        for i in range(3_000_000):
            x += i
    r = load.result
    if r["own_cores"] is None:
        pytest.skip("no /proc here")
    assert r["own_cores"] > 0.1 and r["other_cores"] >= 0.0      # > 0.1: holds beside other load


def test_physical_cores_is_within_the_cpu_count():
    n = physical_cores()
    assert 1 <= n <= (os.cpu_count() or 1)


def test_threads_are_the_physical_cores_less_the_busy_ones():
    assert choose_threads(cores=2, other_cores=0.05) == (2, "2 physical cores, idle before the run")
    n, why = choose_threads(cores=2, other_cores=1.5)
    assert n == 1 and "1.50 of them busy" in why
    assert choose_threads(cores=8, other_cores=2.4)[0] == 6
    assert choose_threads(cores=2, other_cores=3.0)[0] == 1
    n, why = choose_threads(probe_s=0.05)
    assert 1 <= n <= physical_cores() and "physical cores" in why
