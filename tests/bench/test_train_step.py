"""benchmarks/train_step.py on a tiny random stage-2 config: both variants time the same
micro-batches, and their losses agree."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "train_step.py"
CONFIG = {
    "stage": 2, "seed": 1, "output_dir": "unused",
    "base": {"name": "tiny_random"},
    "lcirc": {"num_latents": 4, "compressor_layers": 1, "max_segment_len": 32, "segment_len": 16},
    "data": {"source": "synthetic_tokens", "window": 32, "segment_min": 16, "segment_max": 16,
             "synthetic_docs": 8, "synthetic_len": 200, "val_docs": 2, "qa_context": [48, 96]},
    "train": {"max_steps": 2, "batch_size": 2, "lr": 1.0e-3, "log_every": 0},
}


def test_train_step_times_both_variants_on_the_same_batches(tmp_path):
    cfg, out = tmp_path / "tiny.yaml", tmp_path / "step.json"
    cfg.write_text(yaml.safe_dump(CONFIG))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--config", str(cfg), "--hay", "48,96",
                           "--repeats", "2", "--threads", "1", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["hay"], r["variant"].split(",")[0]) for r in rows] == [
        (48, "full logits"), (48, "answer logits"), (96, "full logits"), (96, "answer logits")]
    for before, after in (rows[0:2], rows[2:4]):
        assert len(before["all_s"]) == len(after["all_s"]) == 2
        assert all(t > 0 for t in before["all_s"] + after["all_s"])
        assert before["losses"][0] != before["losses"][1]          # two different micro-batches
        for a, b in zip(before["losses"], after["losses"]):
            assert abs(a - b) <= 1e-5 * abs(a)
    assert "| 96 | answer logits, unbound K/V views |" in proc.stdout


@pytest.mark.parametrize("args, names", [
    (["--hay", "1k"], "--hay"),
    (["--repeats", "0"], "--repeats"),
    (["--config", "/nonexistent/run.yaml"], "/nonexistent/run.yaml"),
    (["--hay", "0"], "hay_schedule")])
def test_bad_input_is_one_line_and_exit_2(args, names):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and names in proc.stderr
