"""Models: the LCIRC wrapper around a frozen causal LM, and the per-family base adapters."""
from .base_adapter import BASE_ADAPTERS, BaseAdapter, resolve_adapter
from .base_loader import load_base
from .lcirc_causal_lm import LCIRCForCausalLM

__all__ = ["BASE_ADAPTERS", "BaseAdapter", "LCIRCForCausalLM", "load_base", "resolve_adapter"]
