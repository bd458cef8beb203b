"""Linear layers on the CPU with weights packed once for MKL's GEMM.

A plain ``F.linear`` on the CPU repacks its weight into MKL's internal layout on every call. For
the compressor's latent step (K rows per call, the same weights for every segment) that packing
can cost more than the product itself (figures in docs/perf/cpu-packed-gemm.md).
`packed_linear` packs a weight once (``torch.ops.mkl._mkl_reorder_linear_weight``) and reuses
it while the weight is unchanged. Results are MKL's GEMM's up to summation order (within
2.1e-6 at 8 rows in the measurements, mostly bit for bit at 64 rows).

It serves fp32 CPU tensors whose product needs no autograd graph (inference, and the graph-free
steps of training) outside ``torch.compile``; `can_pack` says when. Everything else goes through
``F.linear`` unchanged.

`few_row_linear` is the decoding step's counterpart: products of one to `FEW_ROWS` rows as a
batched product over row blocks of the weight, which needs no copy of the weight.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode


@functools.lru_cache(maxsize=None)
def mkl_packing_available() -> bool:
    """True when this torch has MKL and its packed-GEMM ops."""
    if not torch.backends.mkl.is_available():
        return False
    try:
        return hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight") and \
            hasattr(torch.ops.mkl, "_mkl_linear")
    except (AttributeError, RuntimeError):
        return False


def can_pack(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``linear(x, weight)`` may use a packed weight: fp32 CPU tensors, no autograd graph
    needed, not being compiled, MKL present, and not a DeepSpeed ZeRO-3 parameter (whose storage
    is gathered and released around every call)."""
    if x.device.type != "cpu" or weight.device.type != "cpu" or hasattr(weight, "ds_id"):
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32 or weight.dim() != 2:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    if torch.compiler.is_compiling() or _dispatch_mode_active():
        return False
    return mkl_packing_available()


def _dispatch_mode_active() -> bool:
    """True under a TorchDispatchMode (FLOP counters, fake tensors, tracing): they see the plain
    ``aten`` product rather than MKL's packed op."""
    return _get_current_dispatch_mode() is not None


def _pack_weight(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """MKL's packed copy of `weight` [out, in] for products of `rows` rows."""
    return torch.ops.mkl._mkl_reorder_linear_weight(weight, rows)


class PackCache:
    """One weight's packed copy for one row count (the M of the product).

    The copy is keyed by the weight's storage address, its in-place version counter, its shape
    and strides, and the row count; any change repacks. The entry holds the weight tensor it
    packed, so that address cannot be reused by another tensor while the copy is alive. Entries
    are replaced whole, so concurrent callers each get a copy packed for their own key.
    """

    __slots__ = ("entry",)

    def __init__(self):
        self.entry: tuple | None = None       # (key, packed copy, the weight it was made from)

    @property
    def packed(self) -> torch.Tensor | None:
        entry = self.entry
        return None if entry is None else entry[1]

    def clear(self) -> None:
        self.entry = None

    def __deepcopy__(self, memo) -> "PackCache":
        return PackCache()           # a copy repacks its own weight (MKL's copy is not copyable)

    def __reduce__(self):
        return PackCache, ()         # pickled empty, for the same reason

    def get(self, weight: torch.Tensor, rows: int) -> torch.Tensor:
        w = weight.detach()
        key = (w.data_ptr(), w._version, tuple(w.shape), tuple(w.stride()), rows)
        entry = self.entry
        if entry is not None and entry[0] == key:
            return entry[1]
        self.entry = None                     # drop the old copy before packing a new one
        packed = _pack_weight(w.contiguous(), rows)
        self.entry = (key, packed, w)
        return packed


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  cache: PackCache) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through `cache`'s packed weight when `can_pack` holds.

    Args:
        x: [..., in] fp32; weight: [out, in]; bias: [out] or None; cache: this weight's `PackCache`.
    Returns:
        [..., out], x's dtype.
    """
    if not can_pack(x, weight) or x.numel() == 0:
        return F.linear(x, weight, bias)
    rows = x.numel() // x.shape[-1]
    packed = cache.get(weight, rows)
    b = None if bias is None else bias.detach()
    return torch.ops.mkl._mkl_linear(x.detach(), packed, weight.detach(), b, rows)


FEW_ROWS = 16     # up to this many rows, `few_row_linear` splits the weight into row blocks


def few_row_blocks(out_features: int) -> int:
    """Row blocks `few_row_linear` splits a weight of `out_features` rows into (1: no split)."""
    return next((b for b in (4, 2) if out_features % b == 0), 1)


def few_row_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for inputs of at most `FEW_ROWS` rows (a decoding step).

    On the CPU, torch multiplies one row by a row-major [out, in] weight with a single-threaded
    kernel. The same product as a batched product over row blocks of the weight (``bmm`` of
    [blocks, out/blocks, in] by the rows) runs MKL's batched kernel: 1.3-2.9x faster at one row
    with the SmolLM2 shapes, 0.9-1.2x at 16 (`benchmarks/decode_cpu.py`, docs/perf/serving.md).
    Results equal ``F.linear``'s up to summation order.

    Args:
        x: [..., in]; weight: [out, in] contiguous; bias: [out] or None.
    Returns:
        [..., out], x's dtype. Falls back to ``F.linear`` when the product needs an autograd
        graph, for other devices and dtypes than fp32 CPU, more rows than `FEW_ROWS`, a weight
        that cannot be split, and under compilation or a dispatch mode.
    """
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    blocks = few_row_blocks(weight.shape[0]) if weight.dim() == 2 else 1
    if not 0 < rows <= FEW_ROWS or blocks == 1 or not weight.is_contiguous() \
            or x.shape[-1] != weight.shape[-1] or not can_pack(x, weight):
        return F.linear(x, weight, bias)
    out, inn = weight.shape
    xs = x.detach().reshape(rows, inn).t().expand(blocks, inn, rows)
    y = torch.bmm(weight.detach().view(blocks, out // blocks, inn), xs)    # [blocks, out/b, rows]
    y = y.permute(2, 0, 1).contiguous().view(*x.shape[:-1], out)
    return y if bias is None else y + bias.detach()
