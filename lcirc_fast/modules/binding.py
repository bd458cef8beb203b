"""How modules get their ops: an `OpSet` in the attribute ``ops`` (default: the torch backend).

``bind_ops(model, bind("triton"))`` switches every op-using module under ``model`` at once; the
modules' forwards take no backend argument.
"""
from __future__ import annotations

import functools

import torch.nn as nn

from ..ops.registry import OpSet, bind


@functools.lru_cache(maxsize=None)
def default_ops() -> OpSet:
    """The torch backend's `OpSet`, shared by modules until `bind_ops` replaces it."""
    return bind("torch")


class UsesOps:
    """Mixin of the lcirc modules whose forward calls ops through ``self.ops``."""

    ops: OpSet

    def _init_ops(self) -> None:
        self.ops = default_ops()


def bind_ops(root: nn.Module, ops: OpSet) -> None:
    """Set ``.ops = ops`` on ``root`` and every submodule of it that calls ops."""
    if not isinstance(ops, OpSet):
        raise TypeError(f"ops must be an OpSet (lcirc_fast.ops.registry.bind(...)), got {type(ops).__name__}")
    for module in root.modules():
        if isinstance(module, UsesOps):
            module.ops = ops
