"""benchmarks/gpu_suite.py is import-safe and runs its CPU smoke mode (interpreter)."""
import importlib.util
import json
import pathlib
import sys

import pytest

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
    assert {r["provider"] for r in bench} == {"triton", "sdpa", "naive"}
    assert {r["mode"] for r in bench} == {"fwd", "fwd+bwd"}
    assert all(r["ms_p50"] > 0 for r in bench)
    assert any(r["kind"] == "custom" and r["section"] == "custom" for r in res["rows"])
