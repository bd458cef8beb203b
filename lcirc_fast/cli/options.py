"""``--backend``, shared by the commands that run a model (bench, compress, eval, train).

The choices and their help come from the backend records (`lcirc_fast.ops.registry.RECORDS`).
"""
from __future__ import annotations

import contextlib
import os

import torch

from ..backend import CHOICES, ENV_VAR
from ..ops.registry import RECORDS, BackendUnavailableError


def add_backend_option(parser) -> None:
    """Add ``--backend {auto,torch,triton,cuda}`` (default None: the model's own setting)."""
    each = "; ".join(f"{name}: {rec.summary}" for name, rec in RECORDS.items())
    parser.add_argument(
        "--backend", default=None, choices=CHOICES,
        help=f"kernel backend of the model (default: the model's setting, normally auto: triton on "
             f"CUDA tensors, torch elsewhere; {ENV_VAR} overrides auto). {each}")


def check_backend(name: str | None, device=None) -> None:
    """Refuse, before anything is loaded, a ``--backend`` that cannot run on this machine (or on
    tensors on ``device``, when known): `BackendUnavailableError`, one line, exit status 2."""
    if name in (None, "auto"):
        return
    rec = RECORDS[name]
    reason = rec.unavailable() or (None if device is None else rec.wrong_device(torch.device(device)))
    if reason is not None:
        raise BackendUnavailableError(f"--backend {name}: {reason}")


def apply_backend(model, name: str | None):
    """``model`` switched to backend ``name`` (unchanged when None); raises
    `BackendUnavailableError` when it cannot run on the model's device. Returns the model."""
    if name is not None:
        model.configure(backend=name)
    return model


@contextlib.contextmanager
def backend_for_new_models(name: str | None):
    """Within the block, models built with backend "auto" (the default) run on ``name``
    (through ``LCIRC_BACKEND``, restored on exit); no change when ``name`` is None."""
    if name is None:
        yield
        return
    saved = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = name
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved
