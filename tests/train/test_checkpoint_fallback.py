"""Resume falls back past a corrupt newest checkpoint, and log.jsonl is cut to the resumed step."""
import json
import shutil
from pathlib import Path

import pytest
import yaml

from lcirc_fast.cli import main
from lcirc_fast.errors import CheckpointError
from lcirc_fast.training import Trainer, config_from_dict, run_training
from lcirc_fast.training.run_dir import truncate_log

FAST = {"max_steps": 4, "eval_every": 2, "save_every": 2}


def _truncate(p: Path):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _bad_json(p: Path):
    p.write_text(p.read_text().replace("{", "[", 1))  # same size, no longer JSON


CORRUPTIONS = {
    "truncated engine.safetensors": lambda c: _truncate(c / "engine.safetensors"),
    "bad JSON in trainer_rank0.json": lambda c: _bad_json(c / "trainer_rank0.json"),
    "missing engine.json": lambda c: (c / "engine.json").unlink(),
    "bad JSON in manifest.json": lambda c: _bad_json(c / "manifest.json"),
    "no manifest.json (killed while writing)": lambda c: (c / "manifest.json").unlink(),
    "directory gone, LATEST dangling": lambda c: shutil.rmtree(c),
}


def _steps(log: Path) -> list:
    recs = [json.loads(ln) for ln in log.read_text().splitlines()]
    return [r["validation"]["step"] if "validation" in r else r["step"] for r in recs]


@pytest.fixture
def finished_run(tiny_cfg, tmp_path):
    d = tiny_cfg(output_dir=str(tmp_path / "run"), train=FAST)
    res = run_training(config_from_dict(d), resume="none", quiet=True)
    out = tmp_path / "run"
    assert sorted(p.name for p in (out / "checkpoints").glob("step*")) == ["step0000002", "step0000004"]
    shutil.copytree(out, tmp_path / "pristine")
    return d, out, tmp_path / "pristine", res


def test_resume_falls_back_to_the_newest_complete_checkpoint(finished_run, capfd):
    d, out, pristine, res = finished_run
    cfg = config_from_dict(d)
    newest = out / "checkpoints" / "step0000004"
    for what, corrupt in CORRUPTIONS.items():
        shutil.rmtree(out)
        shutil.copytree(pristine, out)
        corrupt(newest)
        tr = Trainer(cfg, resume="auto", quiet=True)
        warning = capfd.readouterr().err
        assert tr.opt_step == 2, what
        assert f"warning: skipping checkpoint {newest}" in warning or (
            "LATEST names checkpoint" in warning and str(newest) in warning), (what, warning)
        assert _steps(out / "log.jsonl") == [0, 1, 2, 2], what  # validation 0, steps 1-2, validation 2
        tr.close()
    # training on from the fallback redoes steps 3-4 exactly, each logged once
    again = Trainer(cfg, resume="auto", quiet=True).train()
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in res["history"]]
    assert _steps(out / "log.jsonl") == [0, 1, 2, 2, 3, 4, 4]


def test_no_usable_checkpoint_and_an_explicit_corrupt_one_are_clear_errors(finished_run, capfd):
    d, out, _, _ = finished_run
    cfg = config_from_dict(d)
    ck = out / "checkpoints"
    _truncate(ck / "step0000004" / "trainer_rank0.safetensors")
    with pytest.raises(CheckpointError, match="corrupt: trainer_rank0.safetensors has") as e:
        Trainer(cfg, resume=str(ck / "step0000004"), quiet=True)  # explicit: no fallback
    assert str(ck / "step0000004") in str(e.value)
    (out.parent / "c.yaml").write_text(yaml.safe_dump(d))
    capfd.readouterr()
    assert main(["train", "--config", str(out.parent / "c.yaml"), "--resume", str(ck / "step0000004")]) == 2
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("lcirc train:")]
    assert len(err) == 1 and "the manifest says" in err[0]
    assert err[0].startswith(f"lcirc train: checkpoint {ck / 'step0000004'} is corrupt: trainer_rank0.safetensors has ")
    (ck / "step0000002" / "engine.json").unlink()
    with pytest.raises(CheckpointError, match="no usable checkpoint in") as e:
        Trainer(cfg, resume="auto", quiet=True)
    msg = str(e.value)
    assert "step0000004" in msg and "step0000002 is incomplete: engine.json is missing" in msg
    assert "--resume none" in msg
    err = capfd.readouterr().err
    assert err.count("warning: skipping checkpoint") == 2
    with pytest.raises(CheckpointError, match="not found"):
        Trainer(cfg, resume=str(ck / "step0000099"), quiet=True)


def test_truncate_log_keeps_the_steps_up_to_the_resumed_one(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [{"validation": {"val_loss": 1.0, "step": 0}}, {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5},
             {"validation": {"val_loss": 1.0, "step": 2}}, {"step": 3, "loss": 1.2}, {"step": 4, "loss": 1.1}]
    log.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 5, "lo')  # torn by a kill
    assert truncate_log(log, 2) == 3
    assert [json.loads(ln) for ln in log.read_text().splitlines()] == lines[:4]
    assert truncate_log(log, 2) == 0 and not list(tmp_path.glob(".*tmp"))
    assert truncate_log(tmp_path / "absent.jsonl", 3) == 0
