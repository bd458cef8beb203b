"""DeepSpeed ZeRO-3 on CPU with gloo (two processes, torchrun): the frozen base is partitioned,
the trainable LCIRC weights are kept whole, and training, checkpointing, resuming and
save_pretrained match ZeRO-0.

Run as a script under torchrun, this file is the probe: it trains to step 2 and prints what
ZeRO-3 holds on rank 0.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
# persistence 0: every base tensor is partitioned, however small (the tiny base is all small)
ZERO3 = {"zero_optimization": {"stage": 3, "overlap_comm": False, "contiguous_gradients": True,
                               "reduce_bucket_size": 50000000,
                               "stage3_param_persistence_threshold": 0},
         "bf16": {"enabled": False}, "fp16": {"enabled": False}}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_port())] + args
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def _train(cfg_path: Path, *extra):
    return _torchrun(["-m", "lcirc_fast", "train", "--config", str(cfg_path), "--quiet",
                      "--threads", "1", *extra])


def _losses(out: Path):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
            if '"loss"' in line]


def _weights(out: Path):
    from safetensors.torch import load_file

    return load_file(out / "final" / "lcirc_model.safetensors")


def test_zero3_two_processes_match_zero0_and_resume(tiny_cfg, tmp_path):
    ds3 = tmp_path / "zero3.json"
    ds3.write_text(json.dumps(ZERO3))
    train = {"max_steps": 3, "eval_every": 0, "save_every": 2}
    runs = {}
    for name, ds in (("z0", ROOT / "train/ds_configs/zero0_cpu.json"), ("z3", ds3)):
        cfg = tiny_cfg(output_dir=str(tmp_path / name), train=train,
                       distributed={"engine": "deepspeed", "deepspeed_config": str(ds)})
        runs[name] = tmp_path / f"{name}.yaml"
        runs[name].write_text(yaml.safe_dump(cfg))
    _train(runs["z0"])

    # ZeRO-3: train to the step-2 checkpoint (the probe), then resume to step 3 with the CLI
    p = _torchrun([str(Path(__file__).resolve()), str(runs["z3"])])
    held = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert held["base_tensors"] > 10 and held["base_numel"] > 10**5
    # each rank stores half of every base tensor and, between forwards, a full copy of the token
    # embeddings only (what compression reads)
    assert held["base_shard_numel"] == pytest.approx(held["base_numel"] / 2, rel=0.01)
    assert held["base_resident_numel"] == held["embed_numel"] > 0
    assert held["lcirc_whole"] and held["lcirc_numel"] > 0
    # `whole` gathers a partitioned tensor (the LM head) and leaves it partitioned
    assert held["whole_equals_base"] and held["whole_left_partitioned"]
    ck = tmp_path / "z3" / "checkpoints" / "step0000002"
    assert len(list(ck.glob("zero_pp_rank_*_model_states.pt"))) == 2   # partitioned model states
    assert len(list(ck.glob("*_optim_states.pt"))) == 2
    _train(runs["z3"])
    steps = [json.loads(ln).get("step") for ln in (tmp_path / "z3" / "log.jsonl").read_text().splitlines()]
    assert [s for s in steps if s is not None] == [1, 2, 3]     # resumed at step 2

    l0, l3 = _losses(tmp_path / "z0"), _losses(tmp_path / "z3")
    assert len(l0) == len(l3) == 3 and len(set(l0)) == 3
    assert l3 == pytest.approx(l0, rel=1e-5)
    w0, w3 = _weights(tmp_path / "z0"), _weights(tmp_path / "z3")   # save_pretrained gathered
    assert sorted(w0) == sorted(w3)
    moved = 0
    for k in w0:
        assert w3[k].shape == w0[k].shape, k
        torch.testing.assert_close(w3[k], w0[k], rtol=1e-5, atol=1e-6, msg=k)
        moved += "gate" in k and bool(w0[k].abs().max() > 0)
    assert moved > 0    # the gates were trained (they start at 0)


@pytest.mark.parametrize("change,words", [
    ({"stage": 2}, "stage: 2 with DeepSpeed ZeRO-3"),
    ({"train": {"bptt": {"kind": "full"}}}, "train.bptt=.* with DeepSpeed ZeRO-3"),
    ({"train": {"bptt": {"kind": "truncated", "k": 2}}}, "train.bptt=.* with DeepSpeed ZeRO-3"),
    ({"train": {"eval_every": 2}}, "train.eval_every=2 with DeepSpeed ZeRO-3"),
])
def test_zero3_refuses_runs_whose_ranks_differ(tiny_cfg, change, words):
    from lcirc_fast.errors import ConfigError
    from lcirc_fast.training import config_from_dict
    from lcirc_fast.training.builders import build_base, build_model
    from lcirc_fast.training.engine import check_ds_config

    ok = config_from_dict(tiny_cfg(train={"eval_every": 0}))
    model = build_model(ok, build_base(ok, torch.device("cpu"))[0])
    check_ds_config(ZERO3, model, on_gpu=False, cfg=ok)
    sections = {"train": {"eval_every": 0}}
    for k, v in change.items():
        sections[k] = {**sections.get(k, {}), **v} if isinstance(v, dict) else v
    if sections.get("stage") == 2:
        sections["data"] = {"source": "synthetic_tokens"}
    bad = config_from_dict(tiny_cfg(**sections))
    with pytest.raises(ConfigError, match=words):
        check_ds_config(ZERO3, model, on_gpu=False, cfg=bad)


def test_whole_without_zero3_returns_the_parameters():
    from lcirc_fast.modules.zero import is_partitioned, whole

    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.zeros(2, 2))
    got = whole(a, b)
    assert got[0] is a and got[1] is b and not is_partitioned(a)


def _probe(cfg_path: str) -> None:
    """Build the ZeRO-3 trainer, train to step 2 (a checkpoint) and report what rank 0 holds."""
    from lcirc_fast.modules.zero import is_partitioned, whole
    from lcirc_fast.training import Trainer, config_from_dict
    from lcirc_fast.training.builders import build_base

    cfg = config_from_dict(yaml.safe_load(Path(cfg_path).read_text()))
    tr = Trainer(cfg, resume="none", quiet=True)
    try:
        tr.train(stop_at=2)
        base = [p for n, p in tr.model.named_parameters() if n.startswith("base.")]
        lcirc = [p for p in tr.model.parameters() if p.requires_grad]
        held = {"base_tensors": len(base), "base_numel": sum(p.ds_numel for p in base),
                "base_shard_numel": sum(p.ds_tensor.numel() for p in base),
                "base_resident_numel": sum(p.numel() for p in base),
                "embed_numel": tr.model.base.get_input_embeddings().weight.numel(),
                "lcirc_numel": sum(p.numel() for p in lcirc),
                "lcirc_whole": all(p.numel() == p.ds_numel for p in lcirc)}
        head = tr.model.base.get_output_embeddings().weight     # untied: partitioned
        full, = whole(head)
        fresh, _ = build_base(cfg, torch.device("cpu"))
        held["whole_equals_base"] = torch.equal(full, fresh.get_output_embeddings().weight)
        held["whole_left_partitioned"] = head.numel() == 0 and is_partitioned(head)
    finally:
        tr.close()
    if tr.rank == 0:
        print("RESULT " + json.dumps(held), flush=True)


if __name__ == "__main__":
    _probe(sys.argv[1])


def test_plain_engine_resumes_a_checkpoint_with_0dim_gates(tiny_cfg, tmp_path):
    """Plain-engine checkpoints written when the gates were 0-dim (weights and Adam moments)."""
    from lcirc_fast.training import config_from_dict
    from lcirc_fast.training.builders import build_base, build_model
    from lcirc_fast.training.checkpoint import save_state
    from lcirc_fast.training.engine import PlainEngine
    from lcirc_fast.training.schedule import make_scheduler

    cfg = config_from_dict(tiny_cfg(train={"grad_accum": 1}))

    def engine():
        model = build_model(cfg, build_base(cfg, torch.device("cpu"))[0])
        return PlainEngine(model, cfg, lambda opt: make_scheduler(opt, 1, 10))

    def step(eng, seed):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, 64, (1, 40), generator=g)
        mem = eng.model.compress(ids[:, :24])
        eng.backward(eng.model(ids[:, 24:], memory=mem, labels=ids[:, 24:]).loss)
        eng.step()

    src = engine()
    step(src, 0)
    st = src.state_dict()
    gates = [k for k in st["model"] if k.endswith("_gate")]
    assert gates
    old = {**st, "model": {k: v.reshape(()) if k in gates else v for k, v in st["model"].items()}}
    ids = {id(p) for n, p in src.model.named_parameters() if n.endswith("_gate")}
    index = [id(p) for grp in src.optimizer.param_groups for p in grp["params"]]
    opt = old["optimizer"] = {**st["optimizer"], "state": dict(st["optimizer"]["state"])}
    for i, s in opt["state"].items():
        if index[i] in ids:
            opt["state"][i] = {k: v.reshape(()) if k.startswith("exp_avg") else v for k, v in s.items()}
    for name, state in (("new", st), ("old", old)):
        (tmp_path / name).mkdir()
        save_state(tmp_path / name, "engine", state)
    new_eng, old_eng = engine(), engine()
    new_eng.load(tmp_path / "new")
    old_eng.load(tmp_path / "old")
    gate = dict(old_eng.model.named_parameters())[gates[0]]
    assert tuple(gate.shape) == (1,) and tuple(old_eng.optimizer.state[gate]["exp_avg"].shape) == (1,)
    step(new_eng, 1)
    step(old_eng, 1)
    for (n, a), b in zip(new_eng.model.named_parameters(), old_eng.model.parameters()):
        assert torch.equal(a, b), n
    assert not torch.equal(gate, dict(src.model.named_parameters())[gates[0]])   # it moved
