"""Operators: naive references, fused kernels and the backend dispatch used by the modules."""
from .dispatch import cross_attention, gated_residual, layer_norm

__all__ = ["cross_attention", "gated_residual", "layer_norm"]
