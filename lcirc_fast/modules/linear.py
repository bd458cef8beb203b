"""`PackedLinear`: an ``nn.Linear`` whose CPU inference reuses a packed copy of its weight;
`FewRowLinear`: one whose products of few rows (a decoding step) run as a batched product."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ops.cpu_gemm import PackCache, few_row_linear, packed_linear


class PackedLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) for weights applied to few rows many
    times, such as the compressor's latent step.

    fp32 CPU calls that need no autograd graph use a packed copy of the weight, made on first use
    and again whenever the weight changes (`lcirc_fast.ops.cpu_gemm`); every other call is
    ``nn.Linear``'s. The copy costs about the weight's size in memory; ``drop_packed()`` frees it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pack = PackCache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self.weight, self.bias, self._pack)

    def drop_packed(self) -> None:
        """Free the packed copy (it is rebuilt on the next packed call)."""
        self._pack.clear()

    def _apply(self, fn, *args, **kwargs):
        self._pack.clear()        # a move or cast leaves the copy (and the old weight) stale
        return super()._apply(fn, *args, **kwargs)


class FewRowLinear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) whose fp32 CPU products of at most
    `lcirc_fast.ops.cpu_gemm.FEW_ROWS` rows without an autograd graph use `few_row_linear`;
    every other call is ``nn.Linear``'s. No extra memory."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return few_row_linear(x, self.weight, self.bias)
