"""benchmarks/gpu_suite.py is import-safe and runs its CPU smoke mode (interpreter), timing every
available backend."""
import dataclasses
import importlib.util
import json
import pathlib
import sys

import pytest
import torch

from lcirc_fast.ops.registry import RECORDS, register, unregister

_PATH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_suite"] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_and_unknown_section(suite, capsys):
    assert suite.main(["--dry-run"]) == 0
    assert "perceiver" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        suite.main(["--dry-run", "--section", "nope"])


def test_cpu_smoke_writes_json(suite, tmp_path):
    calls = []
    suite.register_section("custom", lambda s: calls.append(s.record(kind="custom", value=1)))
    out = tmp_path / "r.json"
    rc = suite.main(["--cpu-smoke", "--section", "env", "--section", "perceiver", "--section", "custom",
                     "--out", str(out)])
    assert rc == 0 and calls
    res = json.loads(out.read_text())
    assert res["green"] is True
    bench = [r for r in res["rows"] if r["kind"] == "bench"]
    assert {r["provider"] for r in bench} == {"torch", "triton", "naive"}   # cuda is not built here
    assert {r["mode"] for r in bench} == {"fwd", "fwd+bwd"}
    assert all(r["ms_p50"] > 0 for r in bench)
    assert any(r["kind"] == "custom" and r["section"] == "custom" for r in res["rows"])
    backends = {r["backend"]: r for r in res["rows"] if r["kind"] == "backend"}
    assert set(backends) == set(RECORDS)
    assert backends["torch"]["available"] and backends["triton"]["available"]
    assert not backends["cuda"]["available"] and "CUDA extension" in backends["cuda"]["reason"]
    speedups = {(r["provider"], r["vs"]) for r in res["rows"] if r["kind"] == "speedup"}
    assert speedups == {("triton", "torch"), ("triton", "naive")}


@pytest.fixture
def stand_in_cuda(monkeypatch):
    """The "cuda" backend made available on the CPU, its gated_residual an eager stand-in."""
    calls = []

    def gated(x, branch, gate):
        calls.append(x.shape)
        return x + torch.tanh(gate.reshape(())) * branch

    monkeypatch.setitem(RECORDS, "cuda", dataclasses.replace(
        RECORDS["cuda"], unavailable=lambda: None, wrong_device=lambda device: None, load=lambda: None))
    register("gated_residual", "cuda", gated)
    yield calls
    unregister("gated_residual", "cuda")


def test_cpu_smoke_times_the_cuda_backend_where_it_has_kernels(suite, tmp_path, stand_in_cuda):
    out = tmp_path / "r.json"
    rc = suite.main(["--cpu-smoke", "--section", "env", "--section", "perceiver", "--section", "gca",
                     "--section", "epilogue", "--out", str(out)])
    assert rc == 0 and stand_in_cuda
    rows = json.loads(out.read_text())["rows"]
    cuda = next(r for r in rows if r["kind"] == "backend" and r["backend"] == "cuda")
    assert cuda["available"] and cuda["provider"] == {
        "cross_attention": "triton", "gated_residual": "cuda", "layer_norm": "triton"}
    timed = {(r["section"], r["case"].split("_b")[0], r["provider"]) for r in rows if r["kind"] == "bench"}
    assert ("epilogue", "gated_residual", "cuda") in timed
    assert ("gca", "gca", "cuda") in timed                # Triton attention + the cuda epilogue
    assert not any(p == "cuda" and c not in ("gated_residual", "gca") for _, c, p in timed)
    same = {(r["case"].split("_b")[0], r["backend"], r["same_as"]) for r in rows if r["kind"] == "same_kernels"}
    assert same == {("perceiver", "cuda", "triton"), ("layer_norm+pos", "cuda", "triton")}
