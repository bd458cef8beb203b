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
                           "--new-tokens", "2", "--rounds", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "same memory from both: True" in proc.stdout
    assert [line.split()[0] for line in lines[-3:]] == ["compress", "window", "decode"]
    runs = json.loads(out.read_text())["runs"]
    assert len(runs["A"]) == len(runs["B"]) == 1
    assert all(r["compress_s"] > 0 and r["file"].startswith(str(ROOT)) for r in runs["A"])
    assert runs["A"][0]["memory_sha256"] == runs["B"][0]["memory_sha256"]


def test_a_broken_checkout_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ab_compare.py"),
                           "--a", str(tmp_path), "--b", str(ROOT), "--rounds", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.startswith("ab_compare: the run in") and proc.stderr.count("\n") == 1
