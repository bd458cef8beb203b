"""Back-propagation policies for the compressor recurrence.

A policy turns the number of recurrence steps into a per-step plan:

* ``"chain"``: the step runs with autograd and its input state keeps its graph (gradient flows
  through the recurrent link into earlier steps);
* ``"cut"``:   the step runs with autograd from a *detached* copy of the previous state (h(0), a
  parameter, is never detached), so gradient reaches it only through its own memory slot;
* ``"none"``:  the step runs without autograd and saves no activations.

The memory is always concatenated with autograd enabled, so slots produced by graph-carrying
steps stay connected to the loss no matter what ran after them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

CHAIN, CUT, NONE = "chain", "cut", "none"


class BPTTPolicy:
    """Base class. `plan(num_steps, trainable_steps)` -> list of CHAIN / CUT / NONE."""

    def plan(self, num_steps: int, trainable_steps: Sequence[int] | None = None) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class Full(BPTTPolicy):
    """Gradient through every step and every memory slot (vanilla BPTT)."""

    def plan(self, num_steps, trainable_steps=None):
        return [CHAIN] * num_steps


@dataclass(frozen=True)
class Truncated(BPTTPolicy):
    """Only the last k steps keep their graph, chained to each other; earlier ones are detached.

    `Truncated(1)` with a loss after every step is stage 1 of the paper.
    """

    k: int = 1

    def __post_init__(self):
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"Truncated(k) needs an int k >= 1, got {self.k!r}")

    def plan(self, num_steps, trainable_steps=None):
        start = max(0, num_steps - self.k)
        return [NONE] * start + [CUT] + [CHAIN] * (num_steps - start - 1) if num_steps else []


@dataclass
class Selective(BPTTPolicy):
    """Selective State BPTT: n chosen steps get gradient through their own memory slot only.

    Args:
        n: how many steps to select at random (ignored when `steps` is given).
        steps: explicit 0-based step indices to select instead of drawing them.
        generator: torch.Generator for the draw.
        replace: draw with replacement (the reference code's behaviour; may select fewer than n).
        full_when_short: when there are at most n steps, run full BPTT instead (the reference
            code's fallback). Off by default: every selected step is cut from its predecessor.
    After `plan`, `last_selected` holds the sorted selected steps.
    """

    n: int = 8
    steps: Sequence[int] | None = None
    generator: torch.Generator | None = None
    replace: bool = False
    full_when_short: bool = False
    last_selected: list[int] = field(default_factory=list, compare=False)

    def __post_init__(self):
        if self.steps is None and (not isinstance(self.n, int) or isinstance(self.n, bool)
                                   or self.n < 1):
            raise ValueError(f"Selective(n) needs an int n >= 1, got {self.n!r}")
        if self.steps is not None:
            steps = [int(s) for s in self.steps]
            if any(s < 0 for s in steps):
                raise ValueError(f"Selective steps must be >= 0, got {list(self.steps)}")
            self.steps = sorted(set(steps))

    def select(self, num_steps: int, trainable_steps: Sequence[int] | None = None) -> list[int]:
        """The selected step indices (sorted, distinct) among `trainable_steps`."""
        candidates = list(range(num_steps)) if trainable_steps is None else list(trainable_steps)
        if self.steps is not None:
            bad = [s for s in self.steps if s >= num_steps]
            if bad:
                raise ValueError(f"Selective steps {bad} out of range for {num_steps} steps")
            return [s for s in self.steps if s in set(candidates)]
        if not candidates:
            return []
        if self.replace:
            idx = torch.randint(len(candidates), (self.n,), generator=self.generator)
        else:
            idx = torch.randperm(len(candidates), generator=self.generator)[: self.n]
        return sorted({candidates[i] for i in idx.tolist()})

    def plan(self, num_steps, trainable_steps=None):
        if self.full_when_short and self.steps is None and num_steps <= self.n:
            self.last_selected = list(range(num_steps))
            return [CHAIN] * num_steps
        chosen = set(self.select(num_steps, trainable_steps))
        self.last_selected = sorted(chosen)
        return [CUT if i in chosen else NONE for i in range(num_steps)]


def as_policy(bptt) -> BPTTPolicy:
    """None -> Full(); a policy instance passes through; anything else is an error."""
    if bptt is None:
        return Full()
    if isinstance(bptt, BPTTPolicy):
        return bptt
    raise TypeError(f"bptt must be a lcirc_fast.bptt policy (Full, Truncated, Selective), "
                    f"got {type(bptt).__name__}")


__all__ = ["BPTTPolicy", "Full", "Truncated", "Selective", "as_policy", "CHAIN", "CUT", "NONE"]
