"""GPU suite end-to-end and compress128k sections: CPU smoke run, budgeting, correctness gating."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time

import pytest
import torch

_BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
_ROOT = _BENCH.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, _BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve their module by name
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def suite():
    return _load("gpu_suite")          # a fresh module: registered sections do not leak


@pytest.fixture
def e2e():
    return _load("e2e_section")


def test_cpu_smoke_whole_script_under_a_minute(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(_ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(_BENCH / "gpu_suite.py"), "--cpu-smoke", "--out",
                           str(out)], cwd=_ROOT, env=env, capture_output=True, text=True,
                          timeout=170)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert wall < 60, f"--cpu-smoke took {wall:.1f}s"
    res = json.loads(out.read_text())
    assert res["green"] is True
    rows = res["rows"]
    kinds = {(r["section"], r["kind"]) for r in rows}
    for sec in ("env", "correctness", "perceiver", "gca", "epilogue", "compress128k", "e2e"):
        assert any(s == sec for s, _ in kinds), f"section {sec} recorded nothing"
    comp = [r for r in rows if r["kind"] == "compress"]
    assert {(r["backend"], r["cuda_graphs"]) for r in comp} == {
        ("torch", False), ("torch", True), ("triton", False), ("triton", True)}
    for r in comp:
        assert r["ms"] > 0 and r["tflops"] > 0 and r["frac_peak"] == pytest.approx(r["tflops"] / 790)
        if r["cuda_graphs"]:
            assert r["bitwise_equal_to_eager"] and r["graph_check_ok"] and r["replays"] > 0
            assert r["graphs_mode"].startswith("emulated")
        else:
            assert r["replays"] == 0
    e2e = [r for r in rows if r["kind"] == "e2e"]
    assert [r["tokens"] for r in e2e] == [32, 64, 128]
    assert all(r["full_s"] > 0 and r["lcirc_s"] > 0 for r in e2e)
    dec = [r for r in rows if r["kind"] == "e2e_decode"]
    assert len(dec) == 1 and dec[0]["memory"] == 8 and dec[0]["cached_tok_s"] > 0
    assert (tmp_path / "e2e.json").exists() and (tmp_path / "e2e.png").exists()
    tail = proc.stdout[-4000:]
    assert "compress best:" in tail and "decode at 8 memory vectors" in tail
    assert "correctness: GREEN" in tail


def test_budget_skips_sections_and_errors_do_not_stop_the_run(suite, tmp_path, capsys):
    seen = []

    def slow(s):
        seen.append(("slow", s.section_deadline - time.perf_counter()))
        time.sleep(0.3)
        s.record(kind="custom")

    def boom(s):
        time.sleep(0.3)
        raise RuntimeError("kaputt")

    for name in list(suite.SECTIONS):
        suite.SECTIONS.pop(name)
    suite.MIN_SECTION_S = 0.5
    suite.register_section("slow", slow, budget_s=0.2)
    suite.register_section("boom", boom)
    suite.register_section("late", lambda s: seen.append(("late", 0)))
    out = tmp_path / "r.json"
    rc = suite.main(["--cpu-smoke", "--budget-s", "1.0", "--out", str(out)])
    assert rc == 1                                    # the error turns the run red
    res = json.loads(out.read_text())
    assert seen[0][0] == "slow" and seen[0][1] <= 0.2
    errs = [r for r in res["rows"] if r["kind"] == "error"]
    assert len(errs) == 1 and errs[0]["section"] == "boom" and "kaputt" in errs[0]["error"]
    skipped = [r for r in res["rows"] if r["kind"] == "skipped"]
    assert [r["section"] for r in skipped] == ["late"] and ("late", 0) not in seen
    assert "ERROR in section boom" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        suite.main(["--dry-run", "--budget-s", "0"])


def test_dry_run_lists_budgets(suite, capsys):
    assert suite.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "compress128k: budget 90s" in out and "e2e: budget 240s" in out


def test_plan_prioritises_the_longest_and_decode_lengths(e2e):
    from lcirc_fast.bench.presets import get_preset

    p = get_preset("llama2-7b")
    s = p.shape()
    first = {"tokens": 4096, "full_s": 0.1, "lcirc_s": 0.1, "wall_s": 0.5}
    lengths = [4096, 8192, 16384, 32768, 65536, 106496, 131072]
    est = {n: e2e._estimate(first, n, p.llm, s, 16)[0] for n in lengths[1:]}
    assert est[131072] > est[65536] > est[8192] > 0
    budget = est[131072] + est[106496] + est[8192] + 0.01
    run, out = e2e.plan_lengths(first, lengths, [131072, 106496], budget, p.llm, s, 16)
    assert 131072 in run and 106496 in run and 65536 in out
    assert run == sorted(run) and set(run) | set(out) == set(lengths[1:])
    run, out = e2e.plan_lengths(first, lengths, [131072, 106496], 1e9, p.llm, s, 16)
    assert out == [] and run == lengths[1:]


def test_memory_oracle_catches_a_wrong_backend(e2e, monkeypatch):
    from lcirc_fast.modules import PerceiverCompressor

    model = e2e.build_compressor_model("cpu", torch.float32, e2e.TINY_COMPRESSOR)
    ids = torch.randint(0, 256, (1, 32))
    good = e2e.memory_oracle(model, ids)
    assert good["ok"] and good["torch"]["ok"] and good["triton"]["ok"]
    real = PerceiverCompressor.step

    def skewed(self, state, kvs, backend="torch"):
        out = real(self, state, kvs, backend="torch")
        return out * 1.001 if backend == "triton" else out

    monkeypatch.setattr(PerceiverCompressor, "step", skewed)
    bad = e2e.memory_oracle(model, ids)
    assert not bad["ok"] and bad["torch"]["ok"] and not bad["triton"]["ok"]


def test_red_check_withholds_compress_measurements(suite, e2e, monkeypatch, tmp_path):
    monkeypatch.setattr(e2e, "memory_oracle",
                        lambda *a, **k: {"ok": False, "eager_err": 1e-7,
                                         "torch": {"err": 1.0, "ok": False},
                                         "triton": {"err": 1.0, "ok": False}})
    out = tmp_path / "r.json"
    rc = suite.main(["--cpu-smoke", "--section", "compress128k", "--out", str(out)])
    assert rc == 1
    rows = json.loads(out.read_text())["rows"]
    assert [r["kind"] for r in rows] == ["compress_check"] and rows[0]["ok"] is False
