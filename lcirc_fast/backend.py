"""Kernel backend selection, read from the records of `lcirc_fast.ops.registry.RECORDS`.

A backend is ``"auto"`` or one of the registry's concrete backends (``"torch"``, ``"triton"``,
``"cuda"``; each record says what it needs). ``"auto"`` picks triton on CUDA tensors and torch
elsewhere (`registry.auto_backend`). The environment variable ``LCIRC_BACKEND`` overrides
``"auto"`` for every model. A resolved backend is turned into ops once, with
``lcirc_fast.ops.registry.bind(backend, allow_tf32=...)``.
"""
from __future__ import annotations

import os

import torch

from .ops import registry

ENV_VAR = "LCIRC_BACKEND"
CHOICES = ("auto", *registry.BACKENDS)          # what a config, LCIRC_BACKEND or --backend may name


def requested_backend(name: str | None) -> str:
    """The backend asked for: ``name`` unless it is None/"auto" and LCIRC_BACKEND is set."""
    if name is None or name == "auto":
        env = os.environ.get(ENV_VAR, "").strip().lower()
        if env:
            if env not in CHOICES:
                raise ValueError(f"{ENV_VAR}={env!r} is not one of {CHOICES}")
            return env
        return "auto"
    if name not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {name!r}")
    return name


def triton_available() -> bool:
    """True when triton imports and either a GPU or the interpreter can run its kernels."""
    return registry.unavailable_reason("triton") is None


def resolve_backend(name: str | None, device: torch.device | str) -> str:
    """Concrete backend (one of `registry.BACKENDS`) for tensors on ``device``.

    Raises `registry.BackendUnavailableError` (a ValueError and a RuntimeError) when the backend
    cannot run on this machine or on tensors on ``device``; the message says why, and names
    LCIRC_BACKEND when the choice came from it.
    """
    req = requested_backend(name)
    device = torch.device(device)
    if req == "auto":
        return registry.auto_backend(device)
    info = registry.record(req)
    reason = info.wrong_device(device) or info.unavailable()
    if reason is not None:
        if name in (None, "auto"):
            reason = f"{ENV_VAR}={req}: {reason}"
        raise registry.BackendUnavailableError(reason)
    return req
