"""Count matmul FLOPs of a callable with torch's FlopCounterMode.

On CPU, SDPA runs `_scaled_dot_product_flash_attention_for_cpu`, which torch's counter does not
know (it would count 0); this module registers the same formula torch uses for the GPU kernels
(Q·Kᵀ + P·V over the full, unmasked matrix), so causal attention counts as the full matrix.

Only global totals are kept: torch's per-module tracker hooks fail on views of parameters made
under ``torch.no_grad()`` (they require grad but have no grad_fn), so it is replaced by a
tracker that attributes every op to "Global".
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils import flop_counter as fc

aten = torch.ops.aten


def _cpu_flash_fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kw) -> int:
    return fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_flash_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                   **kw) -> int:
    return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


CUSTOM_MAPPING = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_fwd,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_flash_bwd,
}


class _GlobalOnly:
    parents = frozenset({"Global"})

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def count_flops(fn: Callable[[], Any]) -> tuple[int, Any]:
    """Run fn() under FlopCounterMode; returns (matmul + attention FLOPs, fn's result)."""
    counter = fc.FlopCounterMode(display=False, custom_mapping=CUSTOM_MAPPING)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        out = fn()
    return int(counter.get_total_flops()), out
