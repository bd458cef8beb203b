"""Micro-benchmarks (pytest-benchmark): `pytest benchmarks/`; CPU runs the torch backend."""
import os

os.environ.setdefault("LCIRC_BACKEND", "torch")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from lcirc_fast.bench.presets import get_preset  # noqa: E402
from lcirc_fast.bench.sweep import build_model  # noqa: E402


@pytest.fixture(scope="session")
def small_model():
    """cpu-small preset (SmolLM2 width, 4 layers) with random weights, eval mode, fp32."""
    return build_model(get_preset("cpu-small"), "cpu", torch.float32)
