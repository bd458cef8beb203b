"""The "triton" backend: the fused kernels (torch custom ops ``lcirc::*``) in the registry.

Importing this touches no GPU driver. Unsupported inputs (a head dim above 256, an unsupported
dtype, CPU tensors without TRITON_INTERPRET=1) raise NotImplementedError or RuntimeError naming
the reason.
"""
from .cross_attn.function import cross_attention
from .layernorm.function import layer_norm
from .registry import register
from .tanh_gate.function import gated_residual

register("cross_attention", "triton", cross_attention)
register("gated_residual", "triton", gated_residual)
register("layer_norm", "triton", layer_norm)
