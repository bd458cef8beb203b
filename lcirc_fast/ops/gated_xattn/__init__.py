"""Gated cross-attention: many LLM tokens over the compressed memory, gated residual epilogue."""
from .function import GatedResidualFunction, gated_residual
from .naive import naive_gated_residual

__all__ = ["GatedResidualFunction", "gated_residual", "naive_gated_residual"]
