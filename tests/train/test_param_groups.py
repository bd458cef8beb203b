"""Optimizer groups with per-group learning rates, and the training-config init options."""
import pytest
import torch

from lcirc_fast.training import Trainer, config_from_dict


def test_lr_mult_sets_group_learning_rates_and_follows_the_schedule(tiny_cfg):
    cfg = config_from_dict(tiny_cfg(lcirc={"query_dependent": True},
                                    train={"lr": 1e-3, "warmup_steps": 2, "max_steps": 4,
                                           "lr_mult": {"compressor": 0.1, "gates": 50.0},
                                           "eval_every": 0, "save_every": 0}, stage=2))
    tr = Trainer(cfg, resume="none", quiet=True)
    groups = {g["name"]: g for g in tr.engine.optimizer.param_groups}
    assert set(groups) == {"gca", "gates", "compressor", "mixer"}
    names = {id(p): n for n, p in tr.model.named_parameters()}
    gate_names = sorted(names[id(p)] for p in groups["gates"]["params"])
    assert gate_names and all(n.endswith("_gate") for n in gate_names)
    assert any(n.startswith("mixer.") for n in gate_names)  # the mixer's gates are gates too
    assert {names[id(p)] for p in groups["compressor"]["params"]} >= {"latents", "compressor.pos_emb"}
    trainable = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    assert sum(len(g["params"]) for g in groups.values()) == len(trainable)
    # warm-up step 1 of 2: every group at half its own peak
    assert groups["gca"]["lr"] == pytest.approx(0.5e-3)
    assert groups["compressor"]["lr"] == pytest.approx(0.5e-4)
    assert groups["gates"]["lr"] == pytest.approx(2.5e-2)
    assert tr.engine.lr() == pytest.approx(0.5e-3)  # reported: train.lr times the schedule
    gates0 = [p.detach().clone() for p in groups["gates"]["params"]]
    tr.train()
    assert groups["gates"]["initial_lr"] / groups["gca"]["initial_lr"] == pytest.approx(50.0)
    assert max((p.detach() - q).abs().max().item() for p, q in zip(groups["gates"]["params"], gates0)) > 1e-2


def test_lr_mult_rejects_unknown_groups_and_bad_values(tiny_cfg):
    with pytest.raises(ValueError, match="perceiver"):
        config_from_dict(tiny_cfg(train={"lr_mult": {"perceiver": 2.0}}))
    with pytest.raises(ValueError, match=r"lcirc\.init\.gca_q_init_scale = 0\.0: must be a positive number"):
        config_from_dict(tiny_cfg(lcirc={"init": {"gca_q_init_scale": 0.0}}))
    with pytest.raises(ValueError, match=r"train\.lr_mult\.gates = 0\.0: must be a positive number"):
        config_from_dict(tiny_cfg(train={"lr_mult": {"gates": 0.0}}))


def test_init_options_open_gates_scale_queries_and_center_positions(tiny_cfg):
    plain = Trainer(config_from_dict(tiny_cfg()), resume="none", quiet=True).model
    cfg = config_from_dict(tiny_cfg(lcirc={"init": {"attn_gate_init": 0.5, "compressor_q_init_scale": 8.0,
                                                    "gca_q_init_scale": 4.0,
                                                    "center_positions": True}}))
    tr = Trainer(cfg, resume="none", quiet=True)
    m = tr.model
    for k, blk in m.gca.items():
        assert blk.attn_gate.item() == 0.5 and blk.ff_gate.item() == 0.0
        torch.testing.assert_close(blk.attn.to_q.weight, 4.0 * plain.gca[k].attn.to_q.weight)
    for a, b in zip(m.compressor.layers, plain.compressor.layers):
        torch.testing.assert_close(a.attn.to_q.weight, 8.0 * b.attn.to_q.weight)
    ids = torch.cat(tr.data.train_docs)
    mean = m.base.get_input_embeddings().weight[ids].mean(0)
    assert mean.norm() > 0
    torch.testing.assert_close(m.compressor.pos_emb, plain.compressor.pos_emb - mean, rtol=1e-5, atol=1e-5)


def test_stage1_validation_reports_the_swapped_memory_control(tiny_cfg):
    cfg = config_from_dict(tiny_cfg(lcirc={"init": {"attn_gate_init": 0.5, "gca_q_init_scale": 4.0}},
                                    train={"eval_every": 0, "save_every": 0}))
    tr = Trainer(cfg, resume="none", quiet=True)
    v = tr.validate()
    assert {"val_loss", "val_loss_no_memory", "val_loss_swapped_memory"} <= set(v)
    # open gates: the content of the memory changes the loss, so the control differs
    assert v["val_loss_swapped_memory"] != v["val_loss"]
    with torch.no_grad():
        for blk in tr.model.gca.values():
            blk.attn_gate.zero_()
    v = tr.validate()
    assert v["val_loss_swapped_memory"] == v["val_loss"] == v["val_loss_no_memory"]


def test_init_from_loads_stage1_weights_and_refuses_a_config_with_more_weights(tiny_cfg, tmp_path):
    from lcirc_fast.training import run_training

    s1 = tiny_cfg(output_dir=str(tmp_path / "s1"), lcirc={"gca_layers": [1]},
                  train={"max_steps": 1, "grad_accum": 1, "eval_every": 0, "save_every": 0})
    run_training(config_from_dict(s1), resume="none", quiet=True)
    final = tmp_path / "s1" / "final"
    ok = config_from_dict(tiny_cfg(stage=2, init_from=str(final), output_dir=str(tmp_path / "s2"),
                                   lcirc={"gca_layers": [1], "query_dependent": True}))
    from safetensors.torch import load_file

    saved = load_file(str(final / "lcirc_model.safetensors"))
    model = Trainer(ok, resume="none", quiet=True).model
    torch.testing.assert_close(model.gca["1"].attn.to_q.weight, saved["gca.1.attn.to_q.weight"])
    assert model.mixer.attn_gate.item() == 0.0  # the new mixer starts closed
    bad = config_from_dict(tiny_cfg(stage=2, init_from=str(final), output_dir=str(tmp_path / "s3"),
                                    lcirc={"gca_layers": [0, 1]}))
    with pytest.raises(ValueError, match=r"gca\.0\."):
        Trainer(bad, resume="none", quiet=True)
    # a stage-1 weights file changed after it was written is refused, not loaded
    from lcirc_fast.errors import CheckpointError

    weights = final / "lcirc_model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x40
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="fails its checksum"):
        Trainer(ok, resume="none", quiet=True)
