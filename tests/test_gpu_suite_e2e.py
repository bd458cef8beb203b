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


def test_cpu_smoke_whole_script_in_two_minutes(tmp_path):
    out = tmp_path / "gpu.json"
    env = dict(os.environ, PYTHONPATH=str(_ROOT))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(_BENCH / "gpu_suite.py"), "--cpu-smoke", "--out",
                           str(out)], cwd=_ROOT, env=env, capture_output=True, text=True,
                          timeout=170)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert wall < 120, f"--cpu-smoke took {wall:.1f}s"   # ~40 s on 2 idle cores; room for load
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
    for r in e2e:                                  # the sweep on auto (torch here), triton beside it
        assert r["lcirc_backend"] == "torch" and set(r["lcirc_s_by_backend"]) == {"torch", "triton"}
        assert r["lcirc_s_by_backend"]["triton"] > 0 and "lcirc[triton]" in r["timing"]
    assert {r["backend"]: r["available"] for r in rows if r["kind"] == "backend"} == {
        "torch": True, "triton": True, "cuda": False}
    gated = [r for r in rows if r["kind"] == "oracle" and r["op"] == "gated_residual"]
    assert {r["backend"] for r in gated} == {"torch", "triton"} and all(r["ok"] for r in gated)
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


def test_estimate_counts_the_runs_the_timing_policy_makes(e2e):
    from lcirc_fast.bench.presets import get_preset
    from lcirc_fast.bench.sweep import SweepOptions

    p = get_preset("llama2-7b")
    s = p.shape()
    policy = SweepOptions(lengths=[1]).timing_policy()      # >= 3 timed runs + a warm-up
    t = {"full": 0.5, "lcirc": 0.2}
    first = {"tokens": 4096, "full_s": t["full"], "lcirc_s": t["lcirc"],
             "timing": {k: {"median": v, "n": 3} for k, v in t.items()},
             "warmup_runs": {"full": 1, "lcirc": 1}, "wall_s": 4 * 0.7 + 2.0}
    secs, _ = e2e._estimate(first, 8192, p.llm, s, 16, policy)
    from lcirc_fast import flops as fl
    r_full = fl.full_prefill(p.llm, 8192).flops / fl.full_prefill(p.llm, 4096).flops
    r_lc = fl.lcirc_prefill(p.llm, s, 8192).flops / fl.lcirc_prefill(p.llm, s, 4096).flops
    want = 1.2 * (4 * (t["full"] * r_full + t["lcirc"] * r_lc) + 2.0)
    assert secs == pytest.approx(want)
    # the old two-run rule (no per-method timing in the row) gives less
    old = {k: v for k, v in first.items() if k not in ("timing", "warmup_runs")}
    assert e2e._estimate(old, 8192, p.llm, s, 16, policy)[0] < secs


def test_memory_oracle_catches_a_wrong_backend(e2e, monkeypatch):
    from lcirc_fast.modules import PerceiverCompressor

    model = e2e.build_compressor_model("cpu", torch.float32, e2e.TINY_COMPRESSOR)
    ids = torch.randint(0, 256, (1, 32))
    good = e2e.memory_oracle(model, ids)
    assert good["ok"] and good["torch"]["ok"] and good["triton"]["ok"]
    real = PerceiverCompressor.step

    def skewed(self, state, kvs):
        out = real(self, state, kvs)
        return out * 1.001 if self.ops.backend == "triton" else out

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


# ------------------------------------------------------------------ scripts/gpu_check.sh budget
_CHECK = _ROOT / "scripts" / "gpu_check.sh"


def _gpu_check(tmp_path, *args, **env):
    full = dict(os.environ, OUT=str(tmp_path / "out"), **{k: str(v) for k, v in env.items()})
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(_CHECK), *args], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=120)
    return proc, time.perf_counter() - t0


def test_gpu_check_default_plan_fits_a_ten_minute_command(tmp_path):
    proc, _ = _gpu_check(tmp_path, "--plan")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "margin 60s" in proc.stdout and "plan: ok" in proc.stdout
    text = _CHECK.read_text()
    defaults = {k: int(text.split(f"{k}=${{{k}:-", 1)[1].split("}", 1)[0])
                for k in ("LIMIT_S", "TOTAL_S", "SMI_S", "SUITE_S", "BUDGET_S", "KILL_S")}
    assert defaults["LIMIT_S"] == 600 and defaults["LIMIT_S"] - defaults["TOTAL_S"] >= 60
    # the worst case of every step, each ended by its timeout plus the kill grace
    assert defaults["SMI_S"] + 2 + defaults["SUITE_S"] + defaults["KILL_S"] <= defaults["TOTAL_S"]
    assert defaults["BUDGET_S"] < defaults["SUITE_S"]


@pytest.mark.parametrize("env, why", [
    (dict(TOTAL_S=590), "leaves less than 30s"),
    (dict(BUDGET_S=500), "must be below SUITE_S"),
    (dict(SUITE_S=600, BUDGET_S=300), "exceed TOTAL_S"),
])
def test_gpu_check_plan_refuses_budgets_that_do_not_fit(tmp_path, env, why):
    proc, _ = _gpu_check(tmp_path, "--plan", **env)
    assert proc.returncode == 2 and why in proc.stdout, proc.stdout
    proc, _ = _gpu_check(tmp_path, **env)            # a real run refuses before it starts
    assert proc.returncode == 2 and why in proc.stdout and not (tmp_path / "out").exists()


def _stub_python(tmp_path, suite_s: float, ext_s: float):
    """A $PYTHON for gpu_check.sh: 'runs' the suite for suite_s and check_ext for ext_s."""
    stub = tmp_path / "py"
    stub.write_text(f"#!/bin/sh\ncase \"$1\" in\n"
                    f"  benchmarks/gpu_suite.py) echo suite \"$@\"; exec sleep {suite_s};;\n"
                    f"  *) echo ext \"$@\"; exec sleep {ext_s};;\nesac\n")
    stub.chmod(0o755)
    return stub


_FAST = dict(LIMIT_S=20, MIN_MARGIN_S=1, SMI_S=1, KILL_S=1)


def test_gpu_check_kills_a_slow_suite_and_ends_by_its_deadline(tmp_path):
    py = _stub_python(tmp_path, suite_s=60, ext_s=60)
    proc, wall = _gpu_check(tmp_path, PYTHON=py, TOTAL_S=9, SUITE_S=4, BUDGET_S=2, EXT_MIN_S=2,
                            **_FAST)
    out = tmp_path / "out"
    assert proc.returncode == 124, proc.stdout + proc.stderr
    assert wall < 9 + 1.5, wall                      # the hard end holds, grace included
    log = (out / "gpu_suite.log").read_text()
    assert "--budget-s 2" in log and "killed after 4s" in log
    assert "== csrc/check_ext.py: exit 124" in proc.stdout     # ran on what was left, killed


def test_gpu_check_skips_the_extension_with_a_note_when_time_is_short(tmp_path):
    py = _stub_python(tmp_path, suite_s=60, ext_s=60)
    proc, wall = _gpu_check(tmp_path, PYTHON=py, TOTAL_S=9, SUITE_S=5, BUDGET_S=3, EXT_MIN_S=5,
                            **_FAST)
    assert proc.returncode == 124 and wall < 9 + 1.5
    assert "== csrc/check_ext.py: skipped:" in proc.stdout and "EXT_MIN_S" in proc.stdout
    assert not (tmp_path / "out" / "check_ext.log").exists()


def test_gpu_check_green_suite_then_extension(tmp_path):
    py = _stub_python(tmp_path, suite_s=0, ext_s=0)
    proc, wall = _gpu_check(tmp_path, PYTHON=py, TOTAL_S=9, SUITE_S=5, BUDGET_S=3, EXT_MIN_S=2,
                            **_FAST)
    assert proc.returncode == 0 and wall < 4, (proc.stdout, wall)
    assert "== csrc/check_ext.py: exit 0" in proc.stdout


def test_gpu_check_times_the_cuda_backend_once_the_extension_is_built(tmp_path):
    built = tmp_path / "_C.so"
    stub = tmp_path / "py"                       # check_ext.py 'builds' the extension
    stub.write_text(f"#!/bin/sh\ncase \"$1\" in\n  benchmarks/gpu_suite.py) echo suite \"$@\";;\n"
                    f"  *) touch {built}; echo ext;;\nesac\n")
    stub.chmod(0o755)
    env = dict(PYTHON=stub, TOTAL_S=9, SUITE_S=5, BUDGET_S=3, EXT_MIN_S=2, CUDA_PASS_MIN_S=2,
               EXT_GLOB=str(built), **_FAST)
    proc, _ = _gpu_check(tmp_path, **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== cuda backend pass: exit 0" in proc.stdout
    log = (tmp_path / "out" / "gpu_suite_cuda.log").read_text()
    assert "--section env --section epilogue --section gca" in log and "gpu_cuda.json" in log
    proc, _ = _gpu_check(tmp_path, **env)        # built before the suite: the suite timed it
    assert "== cuda backend pass: not needed" in proc.stdout
    built.unlink()
    proc, _ = _gpu_check(tmp_path, **dict(env, PYTHON=_stub_python(tmp_path, 0, 0)))
    assert "== cuda backend pass: skipped: the extension is not built" in proc.stdout


def test_sections_start_with_correctness_and_measuring_ones_have_budgets(suite):
    names = list(suite.SECTIONS)
    assert names[:2] == ["env", "correctness"]
    assert "correctness" not in suite.SECTION_BUDGET_S
    assert set(names[2:]) <= set(suite.SECTION_BUDGET_S)


def test_kernel_sections_stop_starting_cases_when_their_budget_is_spent(suite, tmp_path):
    suite.SECTION_BUDGET_S["perceiver"] = 0.0        # spent before the first case
    out = tmp_path / "r.json"
    rc = suite.main(["--cpu-smoke", "--section", "perceiver", "--out", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["kind"], r["case"]) for r in rows] == [("skipped", "perceiver_b1_8x60")]
