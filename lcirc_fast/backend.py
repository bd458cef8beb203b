"""Kernel backend selection.

A backend is one of ``"torch"`` (plain PyTorch: SDPA and eager epilogues), ``"triton"`` (the
fused kernels of `lcirc_fast.ops`), ``"cuda"`` (the compiled extension ``lcirc_fast._C``, each op
without a CUDA kernel served by triton) or ``"auto"`` (triton on CUDA tensors, torch elsewhere).
The environment variable ``LCIRC_BACKEND`` overrides ``"auto"`` for every model. A resolved
backend is turned into ops once, with ``lcirc_fast.ops.registry.bind(backend, allow_tf32=...)``.
"""
from __future__ import annotations

import os

import torch

from .config import BACKENDS
from .ops import registry
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
    return registry.unavailable_reason("triton") is None


def resolve_backend(name: str | None, device: torch.device | str) -> str:
    """Concrete backend ("torch", "triton" or "cuda") for tensors on ``device``.

    Raises RuntimeError when triton cannot run on ``device``, ValueError for "cuda" off a CUDA
    device, and `registry.BackendUnavailableError` (a RuntimeError) when the CUDA extension is not
    usable (the message says why).
    """
    req = requested_backend(name)
    device = torch.device(device)
    if req == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if req == "cuda":
        if device.type != "cuda":
            origin = f"{ENV_VAR}=cuda" if name in (None, "auto") else "backend='cuda'"
            raise ValueError(f"{origin} runs the CUDA extension on CUDA tensors; the tensors are on "
                             f"{device} (use backend 'torch', or 'triton' with TRITON_INTERPRET=1)")
        reason = registry.unavailable_reason("cuda")
        if reason is not None:
            raise registry.BackendUnavailableError(reason)
    if req == "triton":
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(
                "backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before "
                "lcirc_fast is imported to run the kernels on the CPU interpreter")
    return req
