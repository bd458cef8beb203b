"""Loader of the optional compiled CUDA extension ``lcirc_fast._C``.

The extension exists only where it was built (``LCIRC_BUILD_EXT``, see ``setup.py``); every
caller must handle its absence. Once loaded, its ops live in ``torch.ops.lcirc``:

* ``cuda_gated_residual(x [..., C], o [..., C], gate [1] or [C]) -> x + tanh(gate) * o``
* ``cuda_gated_residual_backward(grad_y, o, gate) -> (grad_o, grad_gate)`` (grad_x is grad_y)

Loading also registers ``cuda_gated_residual`` in the ops registry as ``gated_residual`` on
backend ``"cuda"`` (`lcirc_fast.ops.cuda_ops`), with an autograd formula.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType
from typing import Optional

OP_NAMES = ("cuda_gated_residual", "cuda_gated_residual_backward")


@functools.lru_cache(maxsize=None)
def _probe() -> tuple[Optional[ModuleType], Optional[str]]:
    """(module, None) when the extension is usable, else (None, reason)."""
    import torch

    if torch.version.cuda is None:
        return None, (f"torch {torch.__version__} is a CPU build; the CUDA extension "
                      "lcirc_fast._C needs a CUDA build of torch")
    if importlib.util.find_spec("lcirc_fast._C") is None:
        return None, ("lcirc_fast._C is not built: reinstall with LCIRC_BUILD_EXT=1 "
                      "(pip install --no-build-isolation -e .) on a machine with nvcc and cmake")
    try:
        module = importlib.import_module("lcirc_fast._C")
    except (ImportError, OSError) as exc:
        return None, f"lcirc_fast._C failed to load: {exc}"
    missing = [n for n in OP_NAMES if not hasattr(torch.ops.lcirc, n)]
    if missing:
        return None, f"lcirc_fast._C loaded but did not register torch.ops.lcirc.{missing[0]}"
    if not torch.cuda.is_available():
        return None, "lcirc_fast._C is built but no CUDA device is available"
    _register_fakes()
    from .ops.cuda_ops import register_extension_ops

    register_extension_ops()
    return module, None


def _register_fakes() -> None:
    """Shape-only implementations so the ops trace under torch.compile / FakeTensor."""
    import torch

    def gated_fake(x, o, gate):
        return torch.empty_like(x)

    def gated_bwd_fake(grad_y, o, gate):
        return torch.empty_like(grad_y), torch.empty_like(gate)

    for name, fn in zip(OP_NAMES, (gated_fake, gated_bwd_fake)):
        try:
            torch.library.register_fake(f"lcirc::{name}", fn)
        except RuntimeError:  # already registered (e.g. the module was reloaded)
            pass


def load_extension() -> Optional[ModuleType]:
    """The compiled module ``lcirc_fast._C`` (its ops registered), or None when unusable."""
    return _probe()[0]


def extension_available() -> bool:
    """True when ``lcirc_fast._C`` is built, loads, and a CUDA device is present."""
    return _probe()[0] is not None


def extension_unavailable_reason() -> Optional[str]:
    """Why the extension cannot be used (None when it can)."""
    return _probe()[1]
