"""Operators: naive references, fused Triton kernels (torch custom ops ``lcirc::*``), the CUDA
extension's kernels, and the registry that binds one backend's ops for the modules.

* `registry`: one `BackendInfo` record per backend in ``RECORDS`` (its ops, availability checks
  and fallback); ``bind(backend, allow_tf32=None) -> OpSet`` (``.cross_attention``,
  ``.gated_residual``, ``.layer_norm``, ``.backend``, ``.provider``), ``available_backends``,
  ``register``, ``lookup``.
* Backend implementations: `torch_ops` (``sdpa_cross_attention``, ``torch_gated_residual``,
  ``torch_layer_norm``), `triton_ops` (registers the functional Triton API below), `cuda_ops`
  (``cuda_gated_residual``, registered when the extension loads).
* Functional Triton API (imported on first use, so ``import lcirc_fast.ops`` does not import
  triton): ``cross_attention(q, k, v, kv_lengths=None, softmax_scale=None, deterministic=False,
  num_splits=None, allow_tf32=None)``, ``cross_attention_varlen(q, k, v, cu_seqlens_k, ...)``,
  ``gated_residual(x, branch, gate)``, ``layer_norm(x, weight, bias, eps=1e-5, add=None)``.
* References: ``naive_cross_attention``, ``naive_gated_residual``, ``naive_layer_norm``.
"""
import importlib

from .registry import (
    BACKENDS,
    OPS,
    RECORDS,
    BackendInfo,
    BackendUnavailableError,
    OpSet,
    available_backends,
    bind,
    lookup,
    register,
)

_LAZY = {
    "cross_attention": ".cross_attn.function",
    "cross_attention_varlen": ".cross_attn.function",
    "gated_residual": ".tanh_gate.function",
    "layer_norm": ".layernorm.function",
    "naive_cross_attention": ".cross_attn.naive",
    "naive_gated_residual": ".tanh_gate.naive",
    "naive_layer_norm": ".layernorm.naive",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BACKENDS", "OPS", "RECORDS", "BackendInfo", "BackendUnavailableError", "OpSet",
           "available_backends", "bind", "lookup", "register", *_LAZY]
