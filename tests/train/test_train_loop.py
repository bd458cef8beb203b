import json
import math
from pathlib import Path

import pytest
import torch

from lcirc_fast.training import config_from_dict, run_training
from lcirc_fast.training.schedule import warmup_cosine

ROOT = Path(__file__).resolve().parents[2]


def test_resume_gives_identical_loss_trajectory(tiny_cfg, tmp_path):
    full = run_training(config_from_dict(tiny_cfg(output_dir=str(tmp_path / "a"))), resume="none", quiet=True)
    cfg_b = tiny_cfg(output_dir=str(tmp_path / "b"))
    first = run_training(config_from_dict(cfg_b), resume="none", quiet=True, stop_at=2)  # "interrupted"
    assert first["opt_step"] == 2
    resumed = run_training(config_from_dict(cfg_b), resume="auto", quiet=True)
    la = [h["loss"] for h in full["history"]]
    lb = [h["loss"] for h in resumed["history"]]
    assert len(la) == 4 and la == lb  # bit-identical on CPU
    # steps 3-4 ran after the resume and continued the document's memory
    assert all(math.isfinite(x) for x in la)
    out = tmp_path / "b"
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step*"))
    assert ckpts == ["step0000002", "step0000004"] and (out / "checkpoints" / "LATEST").read_text() == "step0000004"
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert (out / "best" / "lcirc_model.safetensors").is_file() and (out / "final" / "lcirc_config.json").is_file()
    recs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert {"lr", "tokens_per_s", "rss_mb", "grad_norm"} <= set(steps[0])
    assert any("validation" in r for r in recs)


def test_stage2_qd_selective_trains_mixer(tiny_cfg):
    cfg = config_from_dict(tiny_cfg(stage=2, lcirc={"query_dependent": True},
                                    train={"max_steps": 2, "grad_accum": 2, "bptt": {"kind": "selective", "n": 2},
                                           "eval_every": 0, "save_every": 0}))
    from lcirc_fast.training import Trainer

    tr = Trainer(cfg, resume="none", quiet=True)
    before = {k: v.clone() for k, v in tr.model.mixer.state_dict().items()}
    gca_before = {k: v.clone() for k, v in tr.model.gca.state_dict().items()}
    res = tr.train()
    assert res["opt_step"] == 2 and all(math.isfinite(h["loss"]) for h in res["history"])
    changed = [k for k, v in tr.model.mixer.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "the QD mixer received no update"
    assert any(not torch.equal(v, gca_before[k]) for k, v in tr.model.gca.state_dict().items())


def test_activation_checkpointing_matches_plain_gradients(tiny_cfg):
    from lcirc_fast.data.stage1 import Stage1Step
    from lcirc_fast.training import Trainer

    grads = []
    for ckpt in (False, True):
        cfg = config_from_dict(tiny_cfg(train={"activation_checkpointing": ckpt, "eval_every": 0}))
        tr = Trainer(cfg, resume="none", quiet=True)
        with torch.no_grad():
            for blk in tr.model.gca.values():  # open the gates so the memory matters
                blk.attn_gate.fill_(0.5)
                blk.ff_gate.fill_(0.5)
        ids = torch.arange(10, 90) % 250
        for i, (lo, hi) in enumerate([(0, 20), (20, 45)]):
            loss = tr.objectives.stage1(Stage1Step(ids[lo:hi], ids[hi:hi + 32], i, 0))[0]
            loss.backward()
        grads.append({n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None})
        tr.close()  # both trainers use the same output_dir
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("compressor") for k in grads[0])
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-6)


def test_config_errors(tiny_cfg, tmp_path):
    from lcirc_fast.training import load_config

    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_config(tmp_path / "empty.yaml")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    bad = tiny_cfg(train={"nope": 1})
    with pytest.raises(ValueError, match="nope"):
        config_from_dict(bad)
    with pytest.raises(ValueError, match="segment_max"):
        config_from_dict(tiny_cfg(data={"segment_max": 1000}))
    with pytest.raises(ValueError, match="engine"):
        config_from_dict(tiny_cfg(distributed={"engine": "horovod"}))
    with pytest.raises(ValueError, match="bptt"):
        from lcirc_fast.training.builders import bptt_policy
        bptt_policy({"kind": "sideways"})
    with pytest.raises(ValueError, match="qa_needle"):
        config_from_dict(tiny_cfg(data={"qa_needle": "top"}))
    with pytest.raises(ValueError, match="stage: 2"):
        config_from_dict(tiny_cfg(data={"qa_needle": "middle"}))   # stage 1
    with pytest.raises(ValueError, match="book"):
        config_from_dict(tiny_cfg(stage=2, data={"qa_needle": "middle", "source": "kjv"}))
    ok = config_from_dict(tiny_cfg(stage=2, data={"qa_needle": "middle", "source": "kjv",
                                                  "qa_tasks": ["passkey", "fact"]}))
    assert ok.data.qa_needle == "middle"


@pytest.mark.parametrize("path", sorted((ROOT / "train" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load_and_validate(path):
    from lcirc_fast.training import load_config

    cfg = load_config(path)
    assert cfg.stage in (1, 2) and cfg.output_dir.startswith("runs/")


def test_warmup_cosine():
    assert warmup_cosine(0, 10, 100) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine(100, 10, 100, min_ratio=0.1) == pytest.approx(0.1)
