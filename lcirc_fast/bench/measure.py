"""Peak CUDA memory of one run (CPU peaks are measured in isolation by `memprobe`)."""
from __future__ import annotations

import torch

CUDA_MEMORY_METHOD = "torch.cuda.max_memory_allocated minus memory_allocated at the start"


class PeakMemory:
    """`with PeakMemory(cuda_device) as pm: ...`; then pm.bytes: the allocator's peak growth."""

    method = CUDA_MEMORY_METHOD

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"PeakMemory reads the CUDA allocator; {self.device} is not a CUDA "
                             f"device (CPU peaks: lcirc_fast.bench.memprobe)")
        self.bytes: int | None = None

    def __enter__(self):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._start = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize(self.device)
        self.bytes = int(torch.cuda.max_memory_allocated(self.device) - self._start)
        return False
