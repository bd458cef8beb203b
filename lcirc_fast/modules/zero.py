"""Whole parameters for code that reads them outside their module's forward.

Under DeepSpeed ZeRO-3 a parameter holds only its shard between module calls; `whole` gathers
such a parameter (`deepspeed.zero.GatheredParameters`) and returns a copy. Parameters that are
whole already (not ZeRO-3, or kept whole: the trainable LCIRC weights during training, see
`lcirc_fast.training.engine`) are returned themselves, so nothing changes for them.
"""
from __future__ import annotations

import torch


def is_partitioned(p: torch.Tensor) -> bool:
    """True for a ZeRO-3 parameter whose data is only its shard right now."""
    if not hasattr(p, "ds_id"):
        return False
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return p.ds_status != ZeroParamStatus.AVAILABLE


def whole(*params: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The full values of `params`, in order.

    Whole parameters come back themselves. Partitioned ones are gathered on every rank (a
    collective: every rank must call this alike) and copied, so the copies stay valid after the
    shards are released. Gradients do not reach a partitioned parameter through its copy: train
    such parameters only while they are kept whole.
    """
    split = [p for p in params if is_partitioned(p)]
    if not split:
        return params
    import deepspeed

    ids = {id(p) for p in split}
    with deepspeed.zero.GatheredParameters(split):
        return tuple(p.detach().clone() if id(p) in ids else p for p in params)
