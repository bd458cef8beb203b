"""Resuming never runs code from a checkpoint: a malicious pickle planted in place of any file that
resume reads (plain and DeepSpeed engines) is refused with a CheckpointError and never executed."""
import json
import math
import os
import pickle
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lcirc_fast.errors import CheckpointError
from lcirc_fast.training import Trainer, config_from_dict, run_training
from lcirc_fast.training.checkpoint import (
    FORMAT,
    MANIFEST,
    load_state,
    pack,
    safe_torch_load,
    save_state,
    unpack,
    verify_checkpoint,
    weights_only_loads,
    write_manifest,
)

sys.path.insert(0, str(Path(__file__).parent))
from resume_probe import plant  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FAST = {"max_steps": 4, "eval_every": 0, "save_every": 2}


def test_pack_round_trips_rng_states_and_optimizer_structures(tmp_path):
    random.seed(5)
    np.random.seed(5)
    obj = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
           "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.95)}]},
           "floats": [math.inf, -math.inf, 1.5], "none": None, "__odd": 1}
    tensors: dict = {}
    tree = json.loads(json.dumps(pack(obj, tensors)))  # strict JSON: no Infinity
    back = unpack(tree, tensors)
    assert back["python"] == obj["python"]
    random.setstate(back["python"])
    np.random.set_state(back["numpy"])
    assert np.random.get_state()[1].dtype == np.uint32 and np.random.rand() == pytest.approx(
        np.random.RandomState(5).rand())
    assert torch.equal(back["torch"], obj["torch"]) and back["torch"].dtype == torch.uint8
    assert back["optimizer"]["state"][0]["step"].item() == 3.0
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert back["floats"][:2] == [math.inf, -math.inf] and back["__odd"] == 1
    with pytest.raises(TypeError, match=r"state\.f: a function cannot be stored"):
        pack({"f": lambda: 0}, {})
    deep = tmp_path / "deep"
    deep.mkdir()
    save_state(deep, "s", {"a": 1})
    (deep / "s.json").write_text('{"format": "%s", "state": %s1%s}' % (FORMAT, "[" * 50000, "]" * 50000))
    with pytest.raises(CheckpointError, match="s.json is not valid JSON"):
        load_state(deep, "s")
    with pytest.raises(CheckpointError, match="malformed __float__"):
        unpack({"__float__": "1e9"}, {})
    with pytest.raises(CheckpointError, match="dtype object is not numeric"):
        unpack({"__ndarray__": "0", "dtype": "O"}, {"0": torch.zeros(2)})


def test_every_torch_load_inside_weights_only_loads_refuses_code(tmp_path):
    evil, marker = tmp_path / "evil.pt", tmp_path / "marker"
    evil.write_bytes(b"")
    plant(evil, marker)
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # a user's setting does not open it up
    try:
        with weights_only_loads():
            with pytest.raises(pickle.UnpicklingError, match="posix.system"):
                torch.load(evil, weights_only=False)
    finally:
        assert os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD") == "1"
    with weights_only_loads():
        with pytest.raises(pickle.UnpicklingError, match="posix.system"):
            torch.load(evil, weights_only=False)  # as DeepSpeed's loaders ask
    assert not marker.exists() and os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before
    with pytest.raises(CheckpointError, match=r"evil\.pt: it does not load as plain tensors.*posix\.system"):
        safe_torch_load(evil)
    assert not marker.exists()


def _train_to_step2(tiny_cfg, tmp_path) -> tuple[dict, Path]:
    d = tiny_cfg(output_dir=str(tmp_path / "run"), train=FAST)
    run_training(config_from_dict(d), resume="none", quiet=True, stop_at=2)
    return d, tmp_path / "run" / "checkpoints" / "step0000002"


def test_plain_resume_refuses_a_planted_pickle_in_every_file(tiny_cfg, tmp_path):
    d, ckpt = _train_to_step2(tiny_cfg, tmp_path)
    files = sorted(p.name for p in ckpt.iterdir())
    assert files == ["engine.json", "engine.safetensors", MANIFEST, "trainer_rank0.json",
                     "trainer_rank0.safetensors"]
    live = tmp_path / "live-marker"
    pickle.loads(pickle.dumps(__import__("resume_probe").Payload(live)))
    assert live.exists()  # the payload does run when unpickled
    victim = config_from_dict({**d, "output_dir": str(tmp_path / "victim")})
    for name in files:
        copy = tmp_path / "planted" / name / ckpt.name
        shutil.copytree(ckpt, copy)
        marker = tmp_path / f"marker-{name}"
        plant(copy / name, marker)
        if name != MANIFEST:
            write_manifest(copy, 2)  # as a capable attacker would: the hashes match
        with pytest.raises(CheckpointError) as e:
            Trainer(victim, resume=str(copy), quiet=True)
        assert str(copy) in str(e.value) and name in str(e.value)
        assert not marker.exists(), f"{name}: the planted pickle ran"
    tr = Trainer(victim, resume=str(ckpt), quiet=True)  # the untouched checkpoint still resumes
    assert tr.opt_step == 2 and tr.engine.micro == 2 * d["train"]["grad_accum"] and len(tr.history) == 2
    tr.close()


def test_old_pickle_checkpoint_is_refused_without_unpickling(tiny_cfg, tmp_path):
    d, ckpt = _train_to_step2(tiny_cfg, tmp_path)
    for f in ckpt.iterdir():
        f.unlink()
    (ckpt / "state.pt").write_bytes(b"")
    marker = tmp_path / "marker-state.pt"
    plant(ckpt / "state.pt", marker)
    cfg = config_from_dict(d)
    for resume in (str(ckpt), "auto"):
        with pytest.raises(CheckpointError, match="old pickle format.*start fresh") as e:
            Trainer(cfg, resume=resume, quiet=True)
        assert str(ckpt) in str(e.value) and not marker.exists()
    ds_old = tmp_path / "ds_old"  # DeepSpeed files of the old format: client state pickled inside
    ds_old.mkdir()
    plant_file = ds_old / "mp_rank_00_model_states.pt"
    plant_file.write_bytes(b"")
    plant(plant_file, marker)
    with pytest.raises(CheckpointError, match="ds_old is in the old pickle format"):
        verify_checkpoint(ds_old)
    (ds_old / "trainer_rank0.json").write_text("{}")
    with pytest.raises(CheckpointError, match="ds_old is incomplete: it has no manifest.json"):
        verify_checkpoint(ds_old)
    assert not marker.exists()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deepspeed_resume_refuses_a_planted_pickle_in_every_file(tiny_cfg, tmp_path):
    cfg = tiny_cfg(output_dir=str(tmp_path / "run"), train=FAST, distributed={
        "engine": "deepspeed", "deepspeed_config": str(ROOT / "train/ds_configs/zero2_cpu.json")})
    path = tmp_path / "ds.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), MASTER_PORT=str(_port()))
    p = subprocess.run([sys.executable, str(Path(__file__).parent / "resume_probe.py"), str(path), str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    res = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert res["files"] == [MANIFEST, "mp_rank_00_model_states.pt", "trainer_rank0.json",
                            "trainer_rank0.safetensors", "zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    for a in res["attacks"]:
        assert a["error"] == "CheckpointError" and a["file"] in a["message"], a
        assert not a["marker"], f"{a['file']}: the planted pickle ran"
    pt = [a for a in res["attacks"] if a["file"].endswith(".pt")]
    assert all("weights_only=True" in a["message"] and "posix.system" in a["message"] for a in pt)
    assert len(res["full"]) == 4 and res["resumed"] == res["full"]  # save -> resume, bit-identical
