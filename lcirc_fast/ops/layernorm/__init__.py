"""LayerNorm, optionally fused with the Perceiver's position-table add.

`layer_norm` is the Triton path, built on the torch custom ops ``lcirc::layer_norm_fwd`` /
``lcirc::layer_norm_bwd``; `naive_layer_norm` is the reference.
"""
from .function import layer_norm, layer_norm_bwd, layer_norm_fwd
from .naive import naive_layer_norm

__all__ = ["layer_norm", "layer_norm_bwd", "layer_norm_fwd", "naive_layer_norm"]
