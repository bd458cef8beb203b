"""One training run per output_dir: a second one is refused while the first holds the lock,
and the lock goes with the first run (normal end, error, or kill -9)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lcirc_fast.cli import main
from lcirc_fast.errors import CheckpointError, RunError
from lcirc_fast.training import Trainer, config_from_dict, run_training
from lcirc_fast.training.run_dir import RunLock

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; from lcirc_fast.training.run_dir import RunLock, claim; "
        "claim(sys.argv[1]); lock = RunLock(sys.argv[1]); lock.acquire(); print('locked', flush=True); "
        "time.sleep(120)")


def _hold(out: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_run_into_a_locked_output_dir_is_refused(tiny_cfg, tmp_path, capsys):
    d = tiny_cfg(output_dir=str(tmp_path / "run"), train={"max_steps": 1, "eval_every": 0, "save_every": 0})
    holder = _hold(tmp_path / "run")
    try:
        with pytest.raises(RunError) as e:
            Trainer(config_from_dict(d), quiet=True)
        msg = str(e.value)
        assert f"output_dir {tmp_path / 'run'} is in use by another training run" in msg
        assert f"pid {holder.pid}" in msg and "use another output_dir" in msg
        assert not (tmp_path / "run" / "config.json").exists()  # refused before writing anything
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
        assert main(["train", "--config", str(tmp_path / "c.yaml"), "--quiet"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("lcirc train: output_dir ") and "in use" in err[0]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    res = run_training(config_from_dict(d), quiet=True)  # released by the kill: the run goes ahead
    assert res["opt_step"] == 1


def test_the_lock_is_released_after_a_run_and_after_an_error(tiny_cfg, tmp_path):
    out = tmp_path / "run"
    d = tiny_cfg(output_dir=str(out), train={"max_steps": 1, "eval_every": 0, "save_every": 0})
    run_training(config_from_dict(d), resume="none", quiet=True)
    probe = RunLock(out)
    probe.acquire()
    probe.release()
    with pytest.raises(CheckpointError, match="nowhere not found"):
        Trainer(config_from_dict(d), resume=str(tmp_path / "nowhere"), quiet=True)
    tr = Trainer(config_from_dict(d), resume="none", quiet=True)
    with pytest.raises(RunError, match="locked by another Trainer in this process; call close"):
        RunLock(out).acquire()
    tr.close()
    start = time.time()
    RunLock(out).acquire()
    assert time.time() - start < 1.0
