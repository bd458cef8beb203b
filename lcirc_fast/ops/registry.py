"""Ops registry: ``(op, backend) -> implementation``, bound once into an immutable `OpSet`.

Backends (concrete):

* ``"torch"``: plain PyTorch (SDPA, eager epilogues); runs anywhere.
* ``"triton"``: the fused Triton kernels, as torch custom ops (``lcirc::*``); CUDA tensors, or CPU
  tensors under ``TRITON_INTERPRET=1``.
* ``"cuda"``: the compiled extension ``lcirc_fast._C``; an op it has no kernel for falls back to
  ``"triton"`` (today the extension serves ``gated_residual``; ``cross_attention`` and
  ``layer_norm`` come from Triton, whose split-KV forward merges its partials in its own fused
  combine kernel; the extension's ``split_kv_combine`` is registered for direct use).

Every backend of an op takes the same signature:

* ``cross_attention(q, k, v, kv_lengths=None, softmax_scale=None, deterministic=False)``:
  q [B, Lq, H, D], k/v [B, Lk, H, D], kv_lengths int [B] or None -> [B, Lq, H, D] in q's dtype.
  Implementations also take the keyword ``allow_tf32`` (bound by `bind`).
* ``gated_residual(x, branch, gate)``: x, branch [..., d]; gate a one-element fp32 tensor ->
  x + tanh(gate) * branch in x's dtype.
* ``layer_norm(x, weight, bias, eps=1e-5, add=None)``: LayerNorm(x + add) over the last dim.

Usage: ``ops = bind("triton", allow_tf32=False)``, then ``ops.cross_attention(q, k, v)``; modules
get theirs through `lcirc_fast.modules.bind_ops`. The backend is chosen here, once, by lookup.
"""
from __future__ import annotations

import functools
import importlib
import types
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..config import BACKENDS as _REQUESTABLE
from .utils.runtime import interpreting, resolve_tf32

BACKENDS = tuple(b for b in _REQUESTABLE if b != "auto")   # concrete: "torch", "triton", "cuda"
OPS = ("cross_attention", "gated_residual", "layer_norm")  # the ops an OpSet carries
FALLBACK = {"cuda": "triton"}                                # per op, when no kernel is registered
BIND_OPTIONS = {"cross_attention": ("allow_tf32",)}          # keywords `bind` fixes per op

_IMPLS: dict[tuple[str, str], Callable] = {}


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (the message says why)."""


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        hint = " (resolve 'auto' first with lcirc_fast.backend.resolve_backend)" if backend == "auto" else ""
        raise ValueError(f"backend must be one of {BACKENDS}{hint}, got {backend!r}")


def register(op: str, backend: str, fn: Callable | None = None, *, replace: bool = False):
    """Register ``fn`` as ``op`` on ``backend``; usable as a decorator (``@register(op, backend)``).

    A second registration of the same pair raises unless ``replace=True``.
    """
    _check_backend(backend)

    def deco(f: Callable) -> Callable:
        if (op, backend) in _IMPLS and not replace and _IMPLS[(op, backend)] is not f:
            raise ValueError(f"op {op!r} already has a {backend!r} implementation")
        _IMPLS[(op, backend)] = f
        return f

    return deco if fn is None else deco(fn)


def unregister(op: str, backend: str) -> None:
    """Remove the ``(op, backend)`` entry (no error when absent)."""
    _IMPLS.pop((op, backend), None)


# ---- availability and lazy loading of each backend's implementations -------------------------

def _triton_reason() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - triton is a pinned dependency
        return f"backend='triton' needs the triton package: {exc}"
    if torch.cuda.is_available() or interpreting():
        return None
    return ("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before lcirc_fast is "
            "imported to run the kernels on the CPU interpreter")


def _cuda_reason() -> str | None:
    from .. import _ext

    reason = _ext.extension_unavailable_reason()
    return None if reason is None else f"backend='cuda' needs the compiled CUDA extension: {reason}"


def _load_cuda() -> None:
    from .. import _ext

    _ext.load_extension()  # registers the extension's ops on success (lcirc_fast.ops.cuda_ops)


_REASONS: dict[str, Callable[[], str | None]] = {
    "torch": lambda: None, "triton": _triton_reason, "cuda": _cuda_reason}
_LOADERS: dict[str, Callable[[], object]] = {
    "torch": lambda: importlib.import_module("lcirc_fast.ops.torch_ops"),
    "triton": lambda: importlib.import_module("lcirc_fast.ops.triton_ops"),
    "cuda": _load_cuda,
}


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run here, or None when it can."""
    _check_backend(backend)
    return _REASONS[backend]()


def _chain(backend: str) -> list[str]:
    chain = [backend]
    while chain[-1] in FALLBACK:
        chain.append(FALLBACK[chain[-1]])
    return chain


def lookup(op: str, backend: str) -> tuple[Callable, str]:
    """(implementation, backend serving it) for ``op`` on ``backend``, following `FALLBACK`."""
    _check_backend(backend)
    chain = _chain(backend)
    for b in chain:
        _LOADERS[b]()
        fn = _IMPLS.get((op, b))
        if fn is not None:
            return fn, b
    raise NotImplementedError(f"no implementation of op {op!r} for backend {backend!r} "
                              f"(looked in {' -> '.join(chain)})")


# ---- the bound op set ------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class OpSet:
    """The ops of one backend, looked up once. Attributes: the ops of `OPS` (call them as
    documented in this module), ``backend`` (the requested backend), ``provider`` (op -> backend
    actually serving it) and ``allow_tf32`` (as bound for cross_attention)."""

    backend: str
    allow_tf32: bool
    provider: Mapping[str, str]
    cross_attention: Callable
    gated_residual: Callable
    layer_norm: Callable

    def __repr__(self) -> str:
        return f"OpSet(backend={self.backend!r}, allow_tf32={self.allow_tf32}, provider={dict(self.provider)})"

    def __copy__(self) -> "OpSet":      # immutable: copies (e.g. deepcopy of a module) share it
        return self

    def __deepcopy__(self, memo) -> "OpSet":
        return self

    def __reduce__(self):               # pickled by name: unpickling binds the backend again
        return bind, (self.backend, self.allow_tf32)


def bind(backend: str, allow_tf32: bool | None = None) -> OpSet:
    """The `OpSet` of the concrete ``backend`` ("torch", "triton" or "cuda").

    Args:
        allow_tf32: fp32 cross-attention on TF32 tensor cores (Triton); None: TF32 unless
            ``TRITON_F32_DEFAULT=ieee``. The torch backend ignores it.
    Raises:
        ValueError: an unknown backend (or "auto").
        BackendUnavailableError: the backend cannot run here (the reason is in the message).
    """
    _check_backend(backend)
    reason = unavailable_reason(backend)
    if reason is not None:
        raise BackendUnavailableError(reason)
    tf32 = resolve_tf32(allow_tf32)
    options = {"allow_tf32": tf32}
    impls, provider = {}, {}
    for op in OPS:
        fn, provider[op] = lookup(op, backend)
        bound = {name: options[name] for name in BIND_OPTIONS.get(op, ())}
        impls[op] = functools.partial(fn, **bound) if bound else fn
    return OpSet(backend=backend, allow_tf32=tf32, provider=types.MappingProxyType(provider), **impls)
