"""lcirc_fast: LCIRC / QD-LCIRC recurrent context compression for frozen Llama models."""
from . import bptt
from .config import LCIRCConfig
from .memory import CompressedMemory
from .models import LCIRCForCausalLM

__version__ = "0.1.0"
__all__ = ["LCIRCConfig", "LCIRCForCausalLM", "CompressedMemory", "bptt", "__version__"]
