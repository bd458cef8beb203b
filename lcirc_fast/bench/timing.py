"""Timing harness of `lcirc bench`, in the manner of `triton.testing.do_bench` / pytest-benchmark.

* Every workload is first run uncounted (warm-up) until `warmup_s` have passed, at least once.
* The warm-up gives a time estimate; each workload then gets `max(min_repeats, target_s /
  estimate)` timed runs (at most `max_repeats`): short workloads are repeated more.
* The timed runs of all workloads of one length are interleaved, round by round, with the
  order rotated every round, so that a load that drifts during the measurement hits every
  method alike.
* Reported: median, min, max, quartiles and the relative spread (max - min) / median.

`CpuLoad` reads /proc/stat and /proc/self/stat around a measurement: CPU time spent by other
processes (and stolen by the hypervisor) during it is competing load. `physical_cores` is the
default thread count: the distinct physical cores among the CPUs this process may run on.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

Clock = Callable[[], float]


# ------------------------------------------------------------------------------ statistics
def summarize(samples: list[float]) -> dict[str, Any]:
    """Median, min, max, quartiles (inclusive method), n and spread = (max - min) / median."""
    if not samples:
        raise ValueError("no samples to summarise")
    xs = sorted(float(x) for x in samples)
    med = statistics.median(xs)
    q1, q3 = (statistics.quantiles(xs, n=4, method="inclusive")[::2] if len(xs) > 1
              else (xs[0], xs[0]))
    return {"median": med, "min": xs[0], "max": xs[-1], "q1": q1, "q3": q3, "n": len(xs),
            "spread": (xs[-1] - xs[0]) / med if med > 0 else 0.0, "samples": list(samples)}


# ------------------------------------------------------------------------------- workloads
@dataclass
class Workload:
    """`run` is timed; `setup` (optional, untimed) runs before every run and its result is
    passed to `run`. `units`: items one run produces (e.g. decoded tokens), for rates."""

    run: Callable[..., Any]
    setup: Callable[[], Any] | None = None
    units: int = 1

    def once(self, sync: Callable[[], None] = lambda: None, clock: Clock = time.perf_counter,
             around: Callable[[], Any] | None = None) -> float:
        """Seconds of one run (setup excluded); `around`: a context manager factory wrapped
        around the run alone (e.g. a peak-memory reading)."""
        state = self.setup() if self.setup is not None else None
        sync()
        ctx = around() if around is not None else None
        if ctx is not None:
            ctx.__enter__()
        t0 = clock()
        out = self.run(state) if self.setup is not None else self.run()
        sync()
        dt = clock() - t0
        if ctx is not None:
            ctx.__exit__(None, None, None)
        del out, state
        return dt


@dataclass
class TimingPolicy:
    """warmup_s: uncounted warm-up time per workload (at least one run); min_repeats /
    max_repeats: bounds on timed runs; target_s: timed seconds aimed at per workload."""

    min_repeats: int = 3
    max_repeats: int = 30
    warmup_s: float = 0.1
    target_s: float = 0.3

    def __post_init__(self):
        if self.min_repeats < 1:
            raise ValueError(f"min_repeats must be >= 1, got {self.min_repeats}")
        if self.max_repeats < self.min_repeats:
            raise ValueError("max_repeats must be >= min_repeats")

    def repeats(self, estimate_s: float) -> int:
        if estimate_s <= 0:
            return self.max_repeats
        want = math.ceil(self.target_s / estimate_s - 1e-9)
        return int(min(self.max_repeats, max(self.min_repeats, want)))

    def describe(self) -> str:
        return (f"uncounted warm-up (>= {self.warmup_s:g}s, at least 1 run) per method, then "
                f">= {self.min_repeats} timed runs (up to {self.max_repeats}, aiming at "
                f"{self.target_s:g}s per method), methods interleaved round by round within "
                f"each length; median with min-max")


@dataclass
class Measurement:
    """Result of `measure`: timed samples per workload, the order the timed runs ran in,
    warm-up run counts, and per-workload values from the first warm-up's `around` context."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    warmups: dict[str, int] = field(default_factory=dict)
    first_run: dict[str, Any] = field(default_factory=dict)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {k: summarize(v) for k, v in self.samples.items()}


def measure(workloads: dict[str, Workload], policy: TimingPolicy | None = None,
            sync: Callable[[], None] = lambda: None, clock: Clock = time.perf_counter,
            around_first: Callable[[], Any] | None = None,
            on_run: Callable[[str], None] | None = None) -> Measurement:
    """Warm up every workload, then run the timed repeats interleaved (see the module doc).

    around_first: context-manager factory wrapped around each workload's first warm-up run;
    whatever it exposes as `.bytes` is kept in `Measurement.first_run[name]`.
    on_run: called with the workload's name before every timed run (progress).
    """
    policy = policy or TimingPolicy()
    res = Measurement()
    want: dict[str, int] = {}
    for name, wl in workloads.items():
        spent, runs, last = 0.0, 0, 0.0
        while runs == 0 or spent < policy.warmup_s:
            holder: list = []

            def around(holder=holder):
                ctx = around_first()
                holder.append(ctx)
                return ctx

            use = around if (runs == 0 and around_first is not None) else None
            last = wl.once(sync, clock, use)
            if holder:
                res.first_run[name] = getattr(holder[0], "bytes", None)
            spent += last
            runs += 1
        res.warmups[name] = runs
        want[name] = policy.repeats(last)
        res.samples[name] = []
    names = list(workloads)
    rnd = 0
    while any(len(res.samples[n]) < want[n] for n in names):
        k = rnd % len(names)
        for name in names[k:] + names[:k]:
            if len(res.samples[name]) < want[name]:
                if on_run is not None:
                    on_run(name)
                res.samples[name].append(workloads[name].once(sync, clock))
                res.order.append(name)
        rnd += 1
    return res


# --------------------------------------------------------------------------------- threads
def physical_cores() -> int:
    """Distinct (package, core) pairs among the CPUs this process may run on (falls back to
    the CPU count where the topology is not readable)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        base = f"/sys/devices/system/cpu/cpu{c}/topology/"
        try:
            with open(base + "physical_package_id") as f:
                pkg = f.read().strip()
            with open(base + "core_id") as f:
                core = f.read().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((pkg, core))
    return max(1, len(cores))


def choose_threads(probe_s: float = 0.5, cores: int | None = None,
                   other_cores: float | None = None) -> tuple[int, str]:
    """(threads, why): the physical cores, less those other processes kept busy during a
    `probe_s` look at /proc/stat before the run (OpenMP threads that share a core with another
    process wait on each other). `other_cores` skips the look (tests)."""
    cores = cores or physical_cores()
    if other_cores is None:
        with CpuLoad() as load:
            time.sleep(probe_s)
        other_cores = load.result.get("other_cores")
    if other_cores is None:
        return cores, f"{cores} physical cores"
    free = int(math.floor(cores - other_cores + 0.5))
    if free >= cores:
        return cores, f"{cores} physical cores, idle before the run"
    n = max(1, free)
    return n, (f"{cores} physical cores, {other_cores:.2f} of them busy with other processes "
               f"before the run")


# ------------------------------------------------------------------------------------ load
def _read_proc_stat() -> tuple[int, int] | None:
    """(busy jiffies incl. steal, steal jiffies) over all CPUs, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            parts = f.readline().split()
    except OSError:
        return None
    if not parts or parts[0] != "cpu":
        return None
    v = [int(x) for x in parts[1:]] + [0] * 10
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return user + nice + system + irq + softirq + steal, steal


def _read_self_jiffies() -> int | None:
    try:
        with open("/proc/self/stat") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])   # utime, stime (all threads of this process)


def _loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CpuLoad:
    """`with CpuLoad() as load: ...`; then load.result: wall seconds, busy / own / other / steal
    CPU time in cores (CPU-seconds per wall second), the 1-minute load average at the end.

    other = busy - own: CPU time of every other process (kernel threads included) plus time
    stolen by the hypervisor, while this block ran. None fields where /proc is unreadable.
    `proc_stat` / `self_stat` can be replaced (tests).
    """

    def __init__(self, proc_stat: Callable[[], tuple[int, int] | None] = _read_proc_stat,
                 self_stat: Callable[[], int | None] = _read_self_jiffies,
                 clock: Clock = time.perf_counter):
        self._proc, self._self, self._clock = proc_stat, self_stat, clock
        self.result: dict[str, Any] = {}

    def __enter__(self):
        self._t0, self._p0, self._s0 = self._clock(), self._proc(), self._self()
        return self

    def __exit__(self, *exc):
        wall = self._clock() - self._t0
        p1, s1 = self._proc(), self._self()
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        res: dict[str, Any] = {"wall_s": wall, "busy_cores": None, "own_cores": None,
                               "other_cores": None, "steal_cores": None,
                               "loadavg_1m": _loadavg(), "cpus": os.cpu_count()}
        if None not in (self._p0, p1, self._s0, s1) and wall > 0:
            busy = (p1[0] - self._p0[0]) / hz / wall
            own = (s1 - self._s0) / hz / wall
            res.update(busy_cores=busy, own_cores=own, other_cores=max(0.0, busy - own),
                       steal_cores=(p1[1] - self._p0[1]) / hz / wall)
        self.result = res
        return False


def combine_loads(loads: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall-weighted mean of several `CpuLoad.result`s (None fields skipped)."""
    wall = sum(x.get("wall_s") or 0.0 for x in loads)
    out: dict[str, Any] = {"wall_s": wall, "cpus": os.cpu_count()}
    for key in ("busy_cores", "own_cores", "other_cores", "steal_cores"):
        parts = [(x[key], x["wall_s"]) for x in loads if x.get(key) is not None]
        w = sum(p[1] for p in parts)
        out[key] = sum(v * t for v, t in parts) / w if parts and w > 0 else None
    out["max_other_cores"] = max((x["other_cores"] for x in loads
                                  if x.get("other_cores") is not None), default=None)
    avgs = [x["loadavg_1m"] for x in loads if x.get("loadavg_1m") is not None]
    out["loadavg_1m_max"] = max(avgs) if avgs else None
    return out
