"""nn.Modules built on `lcirc_fast.ops`."""
from .feedforward import FeedForward
from .gca import GatedCrossAttentionBlock
from .perceiver import PerceiverCompressor

__all__ = ["FeedForward", "GatedCrossAttentionBlock", "PerceiverCompressor"]
