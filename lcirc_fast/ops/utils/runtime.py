"""Runtime helpers shared by the Triton ops: interpreter flag, device facts, autotune configs.

Nothing here touches a GPU driver at import time; device properties are read lazily.
"""
from __future__ import annotations

import functools
import os
from collections import Counter

import torch

# Host-side launch counter, keyed by kernel name; tests use it to check which passes ran.
LAUNCHES: Counter = Counter()


def interpreting() -> bool:
    """True when Triton kernels run on the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_tf32(allow_tf32: bool | None) -> bool:
    """``allow_tf32`` or, when None, True unless ``TRITON_F32_DEFAULT=ieee``."""
    if allow_tf32 is not None:
        return bool(allow_tf32)
    return os.environ.get("TRITON_F32_DEFAULT", "tf32").strip().lower() != "ieee"


def autotune_configs(configs: list, interpreter_config) -> list:
    """All `configs` on a GPU; a single interpreter-friendly config under TRITON_INTERPRET=1.

    The interpreter has no benchmarking driver, so an autotuner with more than one config fails.
    """
    return [interpreter_config] if interpreting() else configs


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> int:
    major, minor = torch.cuda.get_device_capability(index)
    return 10 * major + minor


def capability(device: torch.device) -> int:
    """Compute capability of ``device`` as one number (90 for sm_90); 0 off-GPU."""
    if device.type != "cuda":
        return 0
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device``; a small constant off-GPU (interpreter)."""
    if device.type != "cuda":
        return 4
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (n >= 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def count_launch(name: str) -> None:
    LAUNCHES[name] += 1


def check_device(*tensors: torch.Tensor) -> None:
    """Raise unless the tensors share one device and that device can run Triton kernels."""
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"all tensors must be on one device, got {t.device} and {dev}")
    if dev.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"Triton kernels need CUDA tensors (got {dev}); set TRITON_INTERPRET=1 before importing "
            "lcirc_fast to run them on the CPU interpreter")
