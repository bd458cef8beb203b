"""Timing and peak-memory helpers (CPU and CUDA)."""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

CPU_MEMORY_METHOD = ("peak RSS growth: /proc/self/status VmHWM after resetting it through "
                     "/proc/self/clear_refs, minus VmRSS at the start (allocator reuse of freed "
                     "pages makes it a lower bound)")
CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated minus memory_allocated at the start"


def status_kb(field: str) -> int | None:
    """A /proc/self/status field in kB (VmRSS, VmHWM, ...), None where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """`with PeakMemory(device) as pm: ...`; then pm.bytes (None when not measurable)."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.bytes: int | None = None

    @property
    def method(self) -> str:
        return CUDA_MEMORY_METHOD if self.device.type == "cuda" else CPU_MEMORY_METHOD

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self._start = status_kb("VmRSS")
            except OSError:
                self._start = None
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device) - self._start)
        elif self._start is not None:
            hwm = status_kb("VmHWM")
            self.bytes = None if hwm is None else max(0, hwm - self._start) * 1024
        return False


def timed(fn: Callable[[], Any], device: torch.device | str, repeats: int = 1,
          warmup: int = 1) -> tuple[float, Any, int | None]:
    """(best seconds over `repeats`, last result, peak memory bytes of the last run)."""
    device = torch.device(device)
    out = None
    for _ in range(warmup):
        out = fn()
        del out
    best, peak = float("inf"), None
    for _ in range(max(1, repeats)):
        _sync(device)
        with PeakMemory(device) as pm:
            t0 = time.perf_counter()
            out = fn()
            _sync(device)
            dt = time.perf_counter() - t0
        best, peak = min(best, dt), pm.bytes
    return best, out, peak
