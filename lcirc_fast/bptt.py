"""Back-propagation policies for the compressor recurrence.

A policy turns the number of recurrence steps into a per-step plan:

* ``"chain"``: the step runs with autograd and its input state keeps its graph (gradient flows
  through the recurrent link into earlier steps);
* ``"cut"``:   the step runs with autograd from a *detached* copy of the previous state (h(0), a
  parameter, is never detached), so gradient reaches it only through its own memory slot;
* ``"none"``:  the step runs without autograd and saves no activations.

The memory is always concatenated with autograd enabled, so slots produced by graph-carrying
steps stay connected to the loss no matter what ran after them.

A policy is also written as a spec, the mapping of a training config's ``train.bptt``
(``{kind: selective, n: 8}``) or its one-line text form (``selective:8``); `parse_spec` is the one
reader of both, and `from_spec` builds the policy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .errors import ConfigError

CHAIN, CUT, NONE = "chain", "cut", "none"
MAX_STEPS = 1 << 20   # bound of k and n


class BPTTPolicy:
    """Base class. `plan(num_steps, trainable_steps)` -> list of CHAIN / CUT / NONE."""

    def plan(self, num_steps: int, trainable_steps: Sequence[int] | None = None) -> list[str]:
        raise NotImplementedError

    def grad_steps(self, num_steps: int) -> float:
        """Steps of a `num_steps`-step recurrence on the gradient path (expected, for a random
        draw with replacement)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Full(BPTTPolicy):
    """Gradient through every step and every memory slot (vanilla BPTT)."""

    def plan(self, num_steps, trainable_steps=None):
        return [CHAIN] * num_steps

    def grad_steps(self, num_steps):
        return float(num_steps)


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

    def grad_steps(self, num_steps):
        return float(min(self.k, num_steps))


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

    def grad_steps(self, num_steps):
        if self.steps is not None:
            return float(len([s for s in self.steps if s < num_steps]))
        if self.replace and num_steps and not (self.full_when_short and num_steps <= self.n):
            return num_steps * (1.0 - (1.0 - 1.0 / num_steps) ** self.n)
        return float(min(self.n, num_steps))


def as_policy(bptt) -> BPTTPolicy:
    """None -> Full(); a policy instance passes through; anything else is an error."""
    if bptt is None:
        return Full()
    if isinstance(bptt, BPTTPolicy):
        return bptt
    raise TypeError(f"bptt must be a lcirc_fast.bptt policy (Full, Truncated, Selective), "
                    f"got {type(bptt).__name__}")


# ------------------------------------------------------------------------------------ specs
KINDS = {  # kind -> {setting: default}; an int setting counts steps (>= 1)
    "truncated": {"k": 1},
    "selective": {"n": 8, "replace": False, "full_when_short": False},
    "full": {},
}
_NOTES = {"k": " (steps that keep their graph)", "n": " (steps selected for gradient)"}


def _show(value) -> str:
    """A value as YAML spells it (null, true / false), strings quoted."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(value)


def _setting(key: str, name: str, value, default):
    """Setting `name` checked against the type of its default; ConfigError naming `key`."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} = {_show(value)}: must be true or false")
        return value
    number = value if not isinstance(value, float) or not value.is_integer() else int(value)
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise ConfigError(f"{key} = {_show(value)}: must be an integer >= 1{_NOTES[name]}")
    if number > MAX_STEPS:
        raise ConfigError(f"{key} = {_show(value)}: must be at most {MAX_STEPS}")
    return number


def spec_from_text(text: str, key: str = "bptt") -> dict:
    """The mapping of a one-line spec: "full", "truncated:K", "selective:N" or
    "selective:N:replace"; ConfigError naming `key` otherwise."""
    parts = text.strip().lower().split(":") if isinstance(text, str) else []
    spec: dict = {"kind": parts[0]} if parts else {}
    ok = parts[:1] == ["full"] and len(parts) == 1
    if parts[:1] in (["truncated"], ["selective"]) and len(parts) in (2, 3) and parts[1].isdigit():
        spec[{"truncated": "k", "selective": "n"}[parts[0]]] = int(parts[1])
        ok = len(parts) == 2 or (parts[0] == "selective" and parts[2] == "replace")
        spec.update({"replace": True} if len(parts) == 3 else {})
    if not ok:
        raise ConfigError(f"{key} = {_show(text)}: must be a BPTT policy: full, truncated:K, "
                          "selective:N or selective:N:replace")
    return parse_spec(spec, key)


def parse_spec(spec, key: str = "bptt") -> dict:
    """A spec mapping ({kind: ..., settings}) checked and completed with its kind's defaults;
    ConfigError naming `key` (e.g. train.bptt.k) otherwise."""
    kinds = ", ".join(KINDS)
    if not isinstance(spec, dict):
        raise ConfigError(f"{key} = {_show(spec)}: must be a mapping such as {{kind: truncated, k: 1}}")
    if "kind" not in spec:
        raise ConfigError(f"{key}.kind is missing: set it to one of {kinds}")
    kind = spec["kind"]
    if not isinstance(kind, str) or kind not in KINDS:
        raise ConfigError(f"{key}.kind = {_show(kind)}: must be one of {kinds}")
    settings = KINDS[kind]
    unknown = [str(k) for k in spec if k != "kind" and k not in settings]
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}: not a setting of kind {kind} "
                          f"(its settings: {', '.join(settings) or 'none'}); remove it")
    return {"kind": kind, **{name: _setting(f"{key}.{name}", name, spec.get(name, default), default)
                             for name, default in settings.items()}}


def from_spec(spec, generator: torch.Generator | None = None, key: str = "bptt") -> BPTTPolicy:
    """The policy of a spec (a mapping, or its one-line text form); `generator` draws the
    selective steps."""
    spec = spec_from_text(spec, key) if isinstance(spec, str) else parse_spec(spec, key)
    if spec["kind"] == "truncated":
        return Truncated(spec["k"])
    if spec["kind"] == "selective":
        return Selective(spec["n"], generator=generator, replace=spec["replace"],
                         full_when_short=spec["full_when_short"])
    return Full()


__all__ = ["BPTTPolicy", "Full", "Truncated", "Selective", "as_policy", "parse_spec", "spec_from_text",
           "from_spec", "KINDS", "CHAIN", "CUT", "NONE"]
