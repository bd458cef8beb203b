"""kill -9 at random points of training, some while a checkpoint is being written: each restart
(--resume auto) continues from the newest complete checkpoint, and the finished run is
bit-identical to one that was never interrupted (log records, final weights)."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lcirc_fast.training import config_from_dict, run_training

ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).parent / "kill_driver.py"
TIMING = {"tokens_per_s", "samples_per_s", "rss_mb", "elapsed_s"}


def _records(out: Path) -> list[dict]:
    recs = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in recs]


def _start(cfg: Path, when: str, name: str = "-", n: int = 0) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, str(DRIVER), when, name, str(n), "--config", str(cfg),
                             "--quiet", "--threads", "1"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_at_random_step(p: subprocess.Popen, log: Path, rng: random.Random) -> None:
    """SIGKILL once the log has reached a random step, after a random extra delay."""
    target, deadline = rng.randint(3, 4), time.time() + 200
    while p.poll() is None and time.time() < deadline:
        if f'"step": {target},' in (log.read_text() if log.exists() else ""):
            time.sleep(rng.uniform(0.0, 0.3))
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_kill_9_at_random_points_resumes_bit_identically(tiny_cfg, tmp_path, batch_size):
    train = {"max_steps": 6, "grad_accum": 2, "save_every": 2, "eval_every": 3, "batch_size": batch_size}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed runs (--threads 1): the same reductions
    try:
        run_training(config_from_dict(tiny_cfg(output_dir=str(tmp_path / "ref"), train=train)),
                     resume="none", quiet=True)
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "run"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(tiny_cfg(output_dir=str(out), train=train)))
    rng = random.Random(20261201)
    plan = [("before", "save_state", 2),       # in the step-4 checkpoint: engine written, trainer not
            ("after", "write_manifest", 1),    # complete but not yet renamed into place
            ("random", None, 0),
            ("never", None, 0)]
    resumed_from = []
    for when, name, n in plan:
        p = _start(cfg, "never" if when == "random" else when, name or "-", n)
        if when == "random":
            _kill_at_random_step(p, out / "log.jsonl", rng)
        _, err = p.communicate(timeout=300)
        assert p.returncode == (0 if when == "never" else -signal.SIGKILL), err[-3000:]
        resumed_from.append(sorted(p.name for p in (out / "checkpoints").glob("step*")))
    assert resumed_from[0] == ["step0000002"] and resumed_from[1] == ["step0000002"]
    ref = _records(tmp_path / "ref")
    assert [r.get("step") for r in ref if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert _records(out) == ref  # every step once, the same losses, lrs, grad norms, validations
    a, b = load_file(str(tmp_path / "ref" / "final" / "lcirc_model.safetensors")), \
        load_file(str(out / "final" / "lcirc_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((out / "checkpoints").glob(".tmp-*"))
