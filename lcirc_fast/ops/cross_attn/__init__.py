"""Perceiver cross-attention: few latent queries over a long segment (also GCA's many queries).

`cross_attention` / `cross_attention_varlen` are the Triton paths, built on the torch custom ops
``lcirc::xattn_fwd`` / ``lcirc::xattn_bwd`` (importing them touches no GPU driver);
`naive_cross_attention` is the fp32 reference.
"""
from .function import cross_attention, cross_attention_varlen, not_supported_reasons, xattn_bwd, xattn_fwd
from .naive import naive_cross_attention

__all__ = ["cross_attention", "cross_attention_varlen", "naive_cross_attention",
           "not_supported_reasons", "xattn_bwd", "xattn_fwd"]
