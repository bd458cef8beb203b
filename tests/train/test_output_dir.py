"""A run writes only into its own output_dir and only files it made; a diverging run fails cleanly.

Each case runs `lcirc train` in-process on the tiny config and checks the exit status, the one-line
message and that the user's files are untouched.
"""
import json
import os

import pytest
import yaml

from lcirc_fast.cli import main
from lcirc_fast.errors import ConfigError
from lcirc_fast.training import config_from_dict, run_training
from lcirc_fast.training.checkpoint import verify_checkpoint
from lcirc_fast.training.run_dir import MARKER, claim, truncate_log

SHORT = {"max_steps": 1, "eval_every": 0, "save_every": 0}


def _train(tiny_cfg, tmp_path, capsys, out, **train) -> tuple[int, str]:
    """(exit status, stderr) of `lcirc train` into `out`."""
    d = tiny_cfg(output_dir=str(out), train={**SHORT, **train})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(d))
    capsys.readouterr()
    code = main(["train", "--config", str(path), "--quiet"])
    return code, capsys.readouterr().err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_a_lock_symlink_is_refused_and_its_target_kept(tiny_cfg, tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("mine\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(precious)
    code, err = _train(tiny_cfg, tmp_path, capsys, out)
    line = _one_line(err)
    assert code == 2 and str(out / ".lock") in line and "symbolic link" in line
    assert precious.read_text() == "mine\n"
    # a link planted later, inside a run's own directory, is refused too
    (out / ".lock").unlink()
    assert _train(tiny_cfg, tmp_path, capsys, out)[0] == 0
    (out / ".lock").unlink()
    (out / ".lock").symlink_to(precious)
    code, err = _train(tiny_cfg, tmp_path, capsys, out)
    assert code == 2 and str(out / ".lock") in _one_line(err) and precious.read_text() == "mine\n"


def test_a_hard_linked_lock_file_is_not_written(tiny_cfg, tmp_path, capsys):
    out = tmp_path / "run"
    claim(out)
    precious = tmp_path / "precious.txt"
    precious.write_text("mine\n")
    os.link(precious, out / ".lock")
    code, err = _train(tiny_cfg, tmp_path, capsys, out)
    assert code == 2 and "not a lock file of a run" in _one_line(err)
    assert precious.read_text() == "mine\n"


def test_a_foreign_log_jsonl_is_refused_untouched(tiny_cfg, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    text = "notes without a step\n" + json.dumps({"step": 7, "loss": 1.0}) + "\n"
    (out / "log.jsonl").write_text(text)
    code, err = _train(tiny_cfg, tmp_path, capsys, out)
    line = _one_line(err)
    assert code == 2 and f"output_dir {out} already holds files" in line and "log.jsonl" in line
    assert (out / "log.jsonl").read_text() == text and not (out / MARKER).exists()


def test_lines_without_a_step_survive_a_resume(tiny_cfg, tmp_path):
    d = tiny_cfg(output_dir=str(tmp_path / "run"), train={"max_steps": 2, "eval_every": 0, "save_every": 1})
    run_training(config_from_dict(d), resume="none", quiet=True, stop_at=1)
    log = tmp_path / "run" / "log.jsonl"
    with open(log, "a") as f:
        f.write("# a note of the user's\n" + json.dumps({"step": 9, "loss": 1.0}) + "\n")
    run_training(config_from_dict(d), resume="auto", quiet=True)
    lines = log.read_text().splitlines()
    assert lines[1] == "# a note of the user's"                 # kept, in place
    assert [json.loads(ln)["step"] for ln in (lines[0], lines[2])] == [1, 2]   # step 9 of the future dropped
    # a line torn by a kill is dropped, a complete one without a step kept
    log.write_text('{"step": 1}\n[1, 2]\n{"step": 2, "lo')
    assert truncate_log(log, 5) == 1 and log.read_text() == '{"step": 1}\n[1, 2]\n'


def test_a_hugging_face_model_dir_is_refused_untouched(tiny_cfg, tmp_path, capsys):
    out = tmp_path / "hfmodel"
    out.mkdir()
    config = json.dumps({"model_type": "llama", "hidden_size": 64})
    (out / "config.json").write_text(config)
    (out / "model.safetensors").write_bytes(b"weights")
    code, err = _train(tiny_cfg, tmp_path, capsys, out)
    line = _one_line(err)
    assert code == 2 and "not a training run's" in line and "choose another output_dir" in line
    assert (out / "config.json").read_text() == config
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_an_output_dir_that_is_a_file_is_named(tiny_cfg, tmp_path, capsys):
    out = tmp_path / "notes.txt"
    out.write_text("mine\n")
    code, err = _train(tiny_cfg, tmp_path, capsys, out)
    line = _one_line(err)
    assert code == 2 and f"output_dir {out} is a file, not a directory" in line and "Errno" not in line
    assert out.read_text() == "mine\n"
    dangling = tmp_path / "gone"
    dangling.symlink_to(tmp_path / "nowhere")
    code, err = _train(tiny_cfg, tmp_path, capsys, dangling)
    assert code == 2 and f"output_dir {dangling} is a symbolic link to nothing" in _one_line(err)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("name", ["best", "final", "checkpoints", "config.json", "log.jsonl"])
def test_a_symlink_in_a_run_dir_is_refused_not_followed(tiny_cfg, tmp_path, capsys, name):
    out = tmp_path / "run"
    assert _train(tiny_cfg, tmp_path, capsys, out, eval_every=1)[0] == 0    # a run of ours: best/ exists
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine\n")
    target = elsewhere if name in ("best", "final", "checkpoints") else elsewhere / "keep.txt"
    path = out / name
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.symlink_to(target)
    code, err = _train(tiny_cfg, tmp_path, capsys, out, eval_every=1, max_steps=2)
    line = _one_line(err)
    assert code == 2 and f"{path} is a symbolic link" in line and "rmtree" not in line
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]
    assert (elsewhere / "keep.txt").read_text() == "mine\n"


def test_a_run_dir_of_ours_resumes_and_a_marker_of_another_kind_is_refused(tiny_cfg, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(tiny_cfg, tmp_path, capsys, out, save_every=1)[0] == 0
    assert (out / MARKER).is_file()
    (out / MARKER).unlink()     # written before the marker existed: only run files, a training config
    code, err = _train(tiny_cfg, tmp_path, capsys, out, save_every=1, max_steps=2)
    assert code == 0 and (out / MARKER).is_file()
    assert verify_checkpoint(out / "checkpoints" / "step0000002") == 2
    (out / MARKER).write_text("something else\n")
    with pytest.raises(ConfigError, match="is not a marker written by a run"):
        claim(out)


def test_a_diverging_run_fails_with_exit_1_and_keeps_its_checkpoints(tiny_cfg, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _train(tiny_cfg, tmp_path, capsys, out, lr=1.0e6, max_steps=6, save_every=1, eval_every=2)
    line = _one_line(err)
    assert code == 1 and line.startswith("lcirc train: training diverged: ")
    assert "at optimizer step " in line and "lower train.lr" in line and "Error" not in line
    kept = sorted(p for p in (out / "checkpoints").glob("step*"))
    assert kept, "the checkpoints before the divergence are gone"
    for p in kept:      # complete, and none of a step at or after the divergence
        assert verify_checkpoint(p) < int(line.split("at optimizer step ")[1].split()[0])
