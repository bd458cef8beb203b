"""Models: the LCIRC wrapper around a frozen Llama-family causal LM."""
from .lcirc_llama import LCIRCForCausalLM

__all__ = ["LCIRCForCausalLM"]
