"""Gated cross-attention: many LLM tokens over the compressed memory, gated residual epilogue.

`gated_residual` is the Triton path, built on the torch custom ops ``lcirc::gated_residual_fwd`` /
``lcirc::gated_residual_bwd``; `naive_gated_residual` is the reference.
"""
from .function import gated_residual, gated_residual_bwd, gated_residual_fwd
from .naive import naive_gated_residual

__all__ = ["gated_residual", "gated_residual_bwd", "gated_residual_fwd", "naive_gated_residual"]
