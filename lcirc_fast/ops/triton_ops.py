"""Registers the Triton ops in `dispatch.TRITON_OPS` (importing this touches no GPU driver).

Registered callables take the torch signatures minus ``backend``; unsupported inputs (e.g. a head
dim above 256, an unsupported dtype, CPU tensors without TRITON_INTERPRET=1) raise
NotImplementedError or RuntimeError naming the reason.
"""
from __future__ import annotations

from .dispatch import TRITON_OPS
from .gated_xattn.function import gated_residual
from .layernorm.function import layer_norm
from .perceiver_xattn.function import cross_attention

TRITON_OPS.update({
    "cross_attention": cross_attention,
    "gated_residual": gated_residual,
    "layer_norm": layer_norm,
})

__all__ = ["cross_attention", "gated_residual", "layer_norm"]
