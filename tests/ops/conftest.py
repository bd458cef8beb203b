"""Fixtures for the Triton op tests: interpreter flag, seeding and NaN-poisoned allocations."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton kernels

import pytest  # noqa: E402
import torch  # noqa: E402

_real_empty = torch.empty
_real_empty_like = torch.empty_like
_real_new_empty = torch.Tensor.new_empty


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        t.fill_(float("nan"))
    elif t.dtype in (torch.int32, torch.int64):
        t.fill_(-(2 ** 30))
    return t


@pytest.fixture(autouse=True)
def _seed_ops():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def nan_poison(monkeypatch):
    """Uninitialised buffers start as NaN (floats) or a huge negative (ints): unwritten outputs fail."""
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(_real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(_real_empty_like(*a, **k)))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: _poison(_real_new_empty(self, *a, **k)))
    yield


def pytest_collection_modifyitems(config, items):
    """The full compile matrix (`aot_full`) runs only when a `-m` expression names it."""
    if "aot_full" in (config.getoption("markexpr") or ""):
        return
    keep = [item for item in items if item.get_closest_marker("aot_full") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep
