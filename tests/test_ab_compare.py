"""benchmarks/ab_compare.py: two checkouts timed alternately, one table."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_same_checkout_twice_gives_the_same_memory_and_a_full_table(tmp_path):
    out = tmp_path / "ab.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ab_compare.py"),
                           "--a", str(ROOT), "--b", str(ROOT), "--tokens", "96", "--window", "70",
                           "--new-tokens", "2", "--rounds", "1", "--repeats", "2",
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "same memory from both, bit for bit" in proc.stdout
    assert [line.split()[0] for line in lines[-3:]] == ["compress", "window", "decode"]
    runs = json.loads(out.read_text())["runs"]
    assert len(runs["A"]) == len(runs["B"]) == 1
    assert all(r["compress_s"] > 0 and r["file"].startswith(str(ROOT)) for r in runs["A"])
    assert runs["A"][0]["memory_sha256"] == runs["B"][0]["memory_sha256"]
    assert all(len(r["samples"]["compress_s"]) == 2 for r in runs["A"] + runs["B"])
    assert runs["A"][0]["compress_s"] in runs["A"][0]["samples"]["compress_s"]


def test_relative_difference():
    import importlib.util

    import numpy as np
    spec = importlib.util.spec_from_file_location("ab_compare", ROOT / "benchmarks" / "ab_compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a = np.array([1.0, -4.0, 2.0], dtype=np.float32)
    assert mod.relative_difference(a, a) == 0.0
    assert abs(mod.relative_difference(a, a + np.float32(0.004)) - 1e-3) < 1e-6
    assert mod.relative_difference(a, a[:2]) == float("inf")


def test_a_broken_checkout_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ab_compare.py"),
                           "--a", str(tmp_path), "--b", str(ROOT), "--rounds", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.startswith("ab_compare: the run in") and proc.stderr.count("\n") == 1
