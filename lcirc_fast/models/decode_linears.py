"""Faster decoding steps on the CPU: the linear layers a decoding step applies to its few rows
become `FewRowLinear`.

`use_few_row_linears(model)` changes, in place, the class of the base model's plain
``nn.Linear`` layers (its output matrix included) and of the GCA blocks' row-wise projections
(not their memory K/V projection, which multiplies many rows once per memory) to
`lcirc_fast.modules.linear.FewRowLinear`. Parameters, their identity (a tied output matrix stays
tied), hooks and state-dict keys are unchanged; products of up to 16 rows give the same results
up to summation order, larger ones the same bits as before. Speed: docs/perf/serving.md.
"""
from __future__ import annotations

import torch.nn as nn

from ..modules.linear import FewRowLinear


def decode_linears(model) -> list[nn.Linear]:
    """The plain ``nn.Linear`` layers of `model` (an `LCIRCForCausalLM`) that a decoding step
    applies to one row per request: the base model's and the GCA blocks' (all but `to_kv`)."""
    out = [m for m in model.base.modules() if type(m) is nn.Linear]
    for block in model.gca.values():
        out += [m for name, m in block.named_modules()
                if type(m) is nn.Linear and not name.endswith("to_kv")]
    return out


def use_few_row_linears(model) -> int:
    """Make `decode_linears(model)` `FewRowLinear`; returns how many changed (0 when called again)."""
    layers = decode_linears(model)
    for m in layers:
        m.__class__ = FewRowLinear
    return len(layers)


def use_plain_linears(model) -> int:
    """Undo `use_few_row_linears`: its layers become ``nn.Linear`` again; returns how many."""
    layers = [m for m in model.modules() if type(m) is FewRowLinear]
    for m in layers:
        m.__class__ = nn.Linear
    return len(layers)
