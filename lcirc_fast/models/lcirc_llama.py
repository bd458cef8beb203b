"""Old import path of `LCIRCForCausalLM`, which serves every supported family: see lcirc_causal_lm."""
from .lcirc_causal_lm import LCIRCForCausalLM

__all__ = ["LCIRCForCausalLM"]
