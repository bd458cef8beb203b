"""LayerNorm, optionally fused with the Perceiver's position-table add."""
from .function import LayerNormFunction, layer_norm
from .naive import naive_layer_norm

__all__ = ["LayerNormFunction", "layer_norm", "naive_layer_norm"]
