"""Ops registry: one `BackendInfo` record per backend, ``(op, backend) -> implementation``, and
the immutable `OpSet` that `bind` makes of one backend's ops.

A backend is declared once, in `RECORDS` (its name, what it needs, the ops it has kernels for,
how its implementations are loaded, its availability checks and its fallback). Everything
else reads the records: `lcirc_fast.backend.resolve_backend`, the ``--backend`` choices of the
``lcirc`` commands, the GPU benchmarks and docs/environment.md (checked by a test). The plain
list of names that `lcirc_fast.config` validates against (``config.BACKENDS``, with "auto"
first) is checked against the records at import.

Every backend of an op takes the same signature:

* ``cross_attention(q, k, v, kv_lengths=None, softmax_scale=None, deterministic=False)``:
  q [B, Lq, H, D], k/v [B, Lk, H, D], kv_lengths int [B] or None -> [B, Lq, H, D] in q's dtype.
  Implementations also take the keyword ``allow_tf32`` (bound by `bind`).
* ``gated_residual(x, branch, gate)``: x, branch [..., d]; gate a one-element fp32 tensor ->
  x + tanh(gate) * branch in x's dtype.
* ``layer_norm(x, weight, bias, eps=1e-5, add=None)``: LayerNorm(x + add) over the last dim.

Usage: ``ops = bind("triton", allow_tf32=False)``, then ``ops.cross_attention(q, k, v)``; modules
get theirs through `lcirc_fast.modules.bind_ops`.
"""
from __future__ import annotations

import functools
import importlib
import types
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from ..config import BACKENDS as _REQUESTABLE
from ..errors import LCIRCError
from .utils.runtime import interpreting, resolve_tf32

OPS = ("cross_attention", "gated_residual", "layer_norm")  # the ops an OpSet carries
BIND_OPTIONS = {"cross_attention": ("allow_tf32",)}          # keywords `bind` fixes per op


class BackendUnavailableError(LCIRCError, ValueError, RuntimeError):
    """The requested backend cannot run here, or not on these tensors (the message says why and
    what to pick instead). A ValueError and a RuntimeError, so callers may catch either."""


# ---- the records -----------------------------------------------------------------------------

@dataclass(frozen=True)
class BackendInfo:
    """Everything the package knows about one backend.

    Attributes:
        name: the value of ``LCIRCConfig.backend``, ``--backend`` and ``LCIRC_BACKEND``.
        summary: one line: what it runs and what it needs (``--help``, docs/environment.md).
        ops: the ops it has its own kernels for; any other op of `OPS` comes from `fallback`.
        load: imports / loads its implementations (they register themselves with `register`).
        unavailable: () -> why it cannot run on this machine, or None.
        wrong_device: (torch.device) -> why it cannot run on tensors there, or None.
        fallback: the backend serving the ops it lacks (None: it has them all).
        auto_devices: device types on which "auto" picks it ("*": any device type that no
            record names); the first available record in `RECORDS` order wins.
    """

    name: str
    summary: str
    ops: tuple[str, ...]
    load: Callable[[], object]
    unavailable: Callable[[], str | None]
    wrong_device: Callable[[torch.device], str | None]
    fallback: str | None = None
    auto_devices: tuple[str, ...] = ()


def _import(module: str) -> Callable[[], object]:
    return lambda: importlib.import_module(module)


def _triton_unavailable() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # pragma: no cover - triton is a pinned dependency
        return f"backend='triton' needs the triton package: {exc}"
    if torch.cuda.is_available() or interpreting():
        return None
    return ("backend='triton' needs CUDA tensors, or TRITON_INTERPRET=1 set before lcirc_fast is "
            "imported to run the kernels on the CPU interpreter")


def _triton_wrong_device(device: torch.device) -> str | None:
    if device.type == "cuda" or interpreting():
        return None
    return (f"backend='triton' needs CUDA tensors (these are on {device}), or TRITON_INTERPRET=1 set "
            "before lcirc_fast is imported to run the kernels on the CPU interpreter")


def _cuda_unavailable() -> str | None:
    from .. import _ext

    reason = _ext.extension_unavailable_reason()
    return None if reason is None else f"backend='cuda' needs the compiled CUDA extension: {reason}"


def _cuda_wrong_device(device: torch.device) -> str | None:
    if device.type == "cuda":
        return None
    return (f"backend='cuda' runs the CUDA extension on CUDA tensors; these are on {device} (use "
            "backend 'torch', or 'triton' with TRITON_INTERPRET=1)")


def _load_cuda() -> None:
    from .. import _ext

    _ext.load_extension()  # registers the extension's ops on success (lcirc_fast.ops.cuda_ops)


RECORDS: dict[str, BackendInfo] = {r.name: r for r in (
    BackendInfo(
        name="torch", summary="plain PyTorch (SDPA, eager epilogues); any device, nothing to build",
        ops=OPS, load=_import("lcirc_fast.ops.torch_ops"), unavailable=lambda: None,
        wrong_device=lambda device: None, auto_devices=("*",)),
    BackendInfo(
        name="triton", summary="the fused Triton kernels (torch custom ops lcirc::*); CUDA tensors, "
                               "or CPU tensors under TRITON_INTERPRET=1",
        ops=OPS, load=_import("lcirc_fast.ops.triton_ops"), unavailable=_triton_unavailable,
        wrong_device=_triton_wrong_device, auto_devices=("cuda",)),
    BackendInfo(
        name="cuda", summary="the compiled extension lcirc_fast._C (gated_residual; the other ops "
                             "from triton); CUDA tensors, a CUDA build of torch, LCIRC_BUILD_EXT=1",
        ops=("gated_residual",), load=_load_cuda, unavailable=_cuda_unavailable,
        wrong_device=_cuda_wrong_device, fallback="triton"),
)}
BACKENDS = tuple(RECORDS)                                   # concrete: "torch", "triton", "cuda"
if _REQUESTABLE != ("auto", *BACKENDS):                     # pragma: no cover - a development slip
    raise ImportError(f"lcirc_fast.config.BACKENDS {_REQUESTABLE} must be ('auto', *{BACKENDS}): "
                      "a backend is added to both, in the same order")

_IMPLS: dict[tuple[str, str], Callable] = {}


def record(backend: str) -> BackendInfo:
    """The `BackendInfo` of the concrete ``backend``; ValueError for an unknown one (or "auto")."""
    if backend not in RECORDS:
        hint = " (resolve 'auto' first with lcirc_fast.backend.resolve_backend)" if backend == "auto" else ""
        raise ValueError(f"backend must be one of {BACKENDS}{hint}, got {backend!r}")
    return RECORDS[backend]


def register(op: str, backend: str, fn: Callable | None = None, *, replace: bool = False):
    """Register ``fn`` as ``op`` on ``backend``; usable as a decorator (``@register(op, backend)``).

    The op must be one the backend's record declares. A second registration of the same pair
    raises unless ``replace=True``.
    """
    if op not in record(backend).ops:
        raise ValueError(f"backend {backend!r} declares no op {op!r} (its ops: {record(backend).ops}); "
                         "add the op to its BackendInfo in lcirc_fast.ops.registry.RECORDS")

    def deco(f: Callable) -> Callable:
        if (op, backend) in _IMPLS and not replace and _IMPLS[(op, backend)] is not f:
            raise ValueError(f"op {op!r} already has a {backend!r} implementation")
        _IMPLS[(op, backend)] = f
        return f

    return deco if fn is None else deco(fn)


def unregister(op: str, backend: str) -> None:
    """Remove the ``(op, backend)`` entry (no error when absent)."""
    _IMPLS.pop((op, backend), None)


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, or None when it can."""
    return record(backend).unavailable()


def available_backends(device: torch.device | str | None = None) -> tuple[str, ...]:
    """The concrete backends that can run here (on tensors on ``device`` when given), in
    `BACKENDS` order."""
    dev = None if device is None else torch.device(device)
    return tuple(name for name, r in RECORDS.items()
                 if r.unavailable() is None and (dev is None or r.wrong_device(dev) is None))


def auto_backend(device: torch.device | str) -> str:
    """The backend "auto" means for tensors on ``device`` (see `BackendInfo.auto_devices`)."""
    dev = torch.device(device)
    for wanted in (dev.type, "*"):
        for r in RECORDS.values():
            if wanted in r.auto_devices and r.unavailable() is None and r.wrong_device(dev) is None:
                return r.name
    raise BackendUnavailableError(f"no backend runs on {dev} tensors here")  # pragma: no cover


def chain(backend: str) -> list[str]:
    """``backend`` and the backends it falls back to, in order (e.g. cuda -> triton)."""
    out = [record(backend).name]
    while RECORDS[out[-1]].fallback is not None:
        out.append(RECORDS[out[-1]].fallback)
    return out


def lookup(op: str, backend: str) -> tuple[Callable, str]:
    """(implementation, backend serving it) for ``op`` on ``backend``: the first backend of
    `chain` whose record declares ``op``, whose implementation is registered."""
    names = chain(backend)
    for b in names:
        if op not in RECORDS[b].ops:
            continue
        RECORDS[b].load()
        fn = _IMPLS.get((op, b))
        if fn is not None:
            return fn, b
    raise NotImplementedError(f"no implementation of op {op!r} for backend {backend!r} "
                              f"(looked in {' -> '.join(names)})")


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
    """The `OpSet` of the concrete ``backend`` (one of `BACKENDS`).

    Args:
        allow_tf32: fp32 cross-attention on TF32 tensor cores (Triton); None: TF32 unless
            ``TRITON_F32_DEFAULT=ieee``. The torch backend ignores it.
    Raises:
        ValueError: an unknown backend (or "auto").
        BackendUnavailableError: the backend cannot run here (the reason is in the message).
    """
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
