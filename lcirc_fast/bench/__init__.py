"""Benchmarks of LCIRC against full attention: presets, FLOP counting, measured sweeps."""
from .presets import PRESETS, Preset, get_preset

__all__ = ["PRESETS", "Preset", "get_preset"]
