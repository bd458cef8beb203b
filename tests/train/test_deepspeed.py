"""DeepSpeed on CPU with gloo: one process and two processes (torchrun), a few steps each."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd, tmp_path, env_extra=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **(env_extra or {}))
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _losses(out: Path):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
            if '"loss"' in line]


def _write(tiny_cfg, tmp_path, name, **kw):
    cfg = tiny_cfg(output_dir=str(tmp_path / name), **kw)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("zero", ["zero1_cpu.json", "zero0_cpu.json"])  # zero0: DeepSpeed's clipping
def test_deepspeed_one_process_matches_plain(tiny_cfg, tmp_path, zero):
    common = {"train": {"max_steps": 3, "eval_every": 0, "save_every": 3}}
    plain = _write(tiny_cfg, tmp_path, "plain", **common)
    _run([sys.executable, "-m", "lcirc_fast", "train", "--config", str(plain), "--quiet"], tmp_path)
    ds = _write(tiny_cfg, tmp_path, "ds", distributed={"engine": "deepspeed",
                "deepspeed_config": str(ROOT / f"train/ds_configs/{zero}")}, **common)
    _run([sys.executable, "-m", "lcirc_fast", "train", "--config", str(ds), "--quiet", "--threads", "1"],
         tmp_path, {"MASTER_PORT": str(_port())})
    lp, ld = _losses(tmp_path / "plain"), _losses(tmp_path / "ds")
    assert len(lp) == len(ld) == 3
    assert ld == pytest.approx(lp, rel=1e-5)
    assert (tmp_path / "ds" / "checkpoints" / "step0000003" / "mp_rank_00_model_states.pt").is_file()


def test_deepspeed_two_processes_torchrun_zero2(tiny_cfg, tmp_path):
    cfg = _write(tiny_cfg, tmp_path, "ds2", distributed={"engine": "deepspeed",
                 "deepspeed_config": str(ROOT / "train/ds_configs/zero2_cpu.json")},
                 train={"max_steps": 2, "eval_every": 2, "save_every": 2})
    p = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
              str(_port()), "-m", "lcirc_fast", "train", "--config", str(cfg), "--quiet", "--threads", "1"],
             tmp_path)
    out = tmp_path / "ds2"
    losses = _losses(out)
    assert len(losses) == 2 and all(x == x for x in losses)
    result = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert result["opt_step"] == 2 and result["final_val"]["val_tokens"] > 0
    ck = out / "checkpoints" / "step0000002"
    assert len(list(ck.glob("zero_pp_rank_*_optim_states.pt"))) == 2  # one optimizer shard per rank
    assert (ck / "trainer_rank1.safetensors").is_file()  # each rank's RNG and memory state
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
          str(_port()), "-m", "lcirc_fast", "train", "--config", str(cfg), "--quiet", "--threads", "1",
          "--set", "train.max_steps=3", "--set", "train.eval_every=0"], tmp_path)
    steps = [json.loads(ln).get("step") for ln in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [None, 1, 2, None, 3]  # resumed at step 2 on both ranks: validations 0, 2


def test_ds_config_checks_accept_zero3_refuse_cpu_bf16(tiny_cfg):
    from lcirc_fast.training import config_from_dict
    from lcirc_fast.training.builders import build_base, build_model
    from lcirc_fast.training.engine import check_ds_config, load_ds_config

    cfg = config_from_dict(tiny_cfg())
    import torch

    base, _ = build_base(cfg, torch.device("cpu"))
    model = build_model(cfg, base)
    z3 = load_ds_config(str(ROOT / "train/ds_configs/zero3_cpu.json"), cfg, on_gpu=False)
    check_ds_config(z3, model, on_gpu=False)   # the gates have shape [1]: ZeRO-3 is accepted
    model.gca["0"].attn_gate = torch.nn.Parameter(torch.zeros(()))
    with pytest.raises(NotImplementedError, match="ZeRO-3 cannot partition 0-dim parameters"):
        check_ds_config(z3, model, on_gpu=False)
    gpu = load_ds_config(str(ROOT / "train/ds_configs/zero2_gpu.json"), cfg, on_gpu=False)
    with pytest.raises(ValueError, match="bf16 is not supported on CPU"):
        check_ds_config(gpu, model, on_gpu=False)
    ok = load_ds_config(str(ROOT / "train/ds_configs/zero2_cpu.json"), cfg, on_gpu=False)
    check_ds_config(ok, model, on_gpu=False)
    assert ok["gradient_accumulation_steps"] == cfg.train.grad_accum and ok["train_micro_batch_size_per_gpu"] == 1
