"""Perceiver cross-attention: few latent queries over a long segment (also GCA's many queries).

`cross_attention` / `cross_attention_varlen` are the Triton paths (importing them touches no GPU
driver); `naive_cross_attention` is the fp32 reference.
"""
from .function import (CrossAttentionFunction, cross_attention, cross_attention_varlen,
                       not_supported_reasons)
from .naive import naive_cross_attention

__all__ = ["CrossAttentionFunction", "cross_attention", "cross_attention_varlen",
           "naive_cross_attention", "not_supported_reasons"]
