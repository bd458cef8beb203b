"""nn.Modules built on `lcirc_fast.ops`. Each module that calls ops reads them from ``self.ops``
(an `lcirc_fast.ops.registry.OpSet`, the torch backend by default); `bind_ops` sets a whole tree."""
from .binding import UsesOps, bind_ops
from .feedforward import FeedForward
from .gca import GatedCrossAttentionBlock
from .perceiver import PerceiverAttention, PerceiverCompressor

__all__ = ["FeedForward", "GatedCrossAttentionBlock", "PerceiverAttention", "PerceiverCompressor",
           "UsesOps", "bind_ops"]
