"""Kernel backend selection.

A backend is one of ``"torch"`` (plain PyTorch: SDPA and eager epilogues), ``"triton"`` (the
fused kernels of `lcirc_fast.ops`) or ``"auto"`` (triton on CUDA tensors, torch elsewhere).
The environment variable ``LCIRC_BACKEND`` overrides ``"auto"`` for every model.
"""
from __future__ import annotations

import os

import torch

from .config import BACKENDS
from .ops.utils.runtime import interpreting

ENV_VAR = "LCIRC_BACKEND"


def requested_backend(name: str | None) -> str:
    """The backend asked for: ``name`` unless it is None/"auto" and LCIRC_BACKEND is set."""
    if name is None or name == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"{ENV_VAR}={env!r} is not one of {BACKENDS}")
            return env
        return "auto"
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name


def triton_available() -> bool:
    """True when triton imports and either a GPU or the interpreter can run its kernels."""
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - triton is a pinned dependency
        return False
    return torch.cuda.is_available() or interpreting()


def resolve_backend(name: str | None, device: torch.device | str) -> str:
    """Concrete backend ("torch" or "triton") for tensors on ``device``."""
    req = requested_backend(name)
    device = torch.device(device)
    if req == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if req == "triton":
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(
                "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                "lcirc_fast is imported to run the kernels on the CPU interpreter")
    return req
