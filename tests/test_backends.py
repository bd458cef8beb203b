"""Whole-model backend parity: the Triton kernels (CPU interpreter) against the torch ops.

tests/conftest.py sets TRITON_INTERPRET=1 before anything imports the kernels.
"""
import os
from pathlib import Path

import pytest
import torch
from lcirc_testutils import tiny_lcirc

from lcirc_fast import bptt
from lcirc_fast.backend import ENV_VAR
from lcirc_fast.ops.utils.runtime import LAUNCHES

SEG = 8
TOL = dict(rtol=1e-4, atol=1e-5)


def _trainable(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _train_pass(model, backend, ids, x, **kw):
    """compress + forward + backward under `backend`; returns outputs, grads, kernel launches."""
    model.configure(backend=backend)
    model.zero_grad(set_to_none=True)
    LAUNCHES.clear()
    mem = model.compress(ids, segment_len=SEG, **kw)
    out = model(x, memory=mem, labels=x)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in _trainable(model).items() if p.grad is not None}
    return mem.hidden.detach(), out.logits.detach(), out.loss.detach(), grads, dict(LAUNCHES)


def _assert_same(ref, got, expect_grads):
    hidden, logits, loss, grads, _ = ref
    torch.testing.assert_close(got[0], hidden, **TOL)
    torch.testing.assert_close(got[1], logits, **TOL)
    torch.testing.assert_close(got[2], loss, **TOL)
    assert set(got[3]) == set(grads)
    for prefix in expect_grads:                       # every group really got a gradient
        assert any(n.startswith(prefix) and g.abs().sum() > 0 for n, g in grads.items()), prefix
    for name, g in grads.items():
        torch.testing.assert_close(got[3][name], g, **TOL, msg=name)


def test_lcirc_triton_equals_torch_compress_forward_backward():
    model = tiny_lcirc(randomize_gates=True)
    ids = torch.randint(0, 256, (2, 2 * SEG + 3))      # segments of 8, 8, 3
    x = torch.randint(0, 256, (2, 6))
    ref = _train_pass(model, "torch", ids, x)
    got = _train_pass(model, "triton", ids, x)
    assert ref[4] == {}                                # the torch path launches no kernel
    launches = got[4]
    for name in ("ln_fwd", "ln_bwd", "attn_fwd", "attn_bwd_dkdv", "gated_fwd", "gated_bwd",
                 "gate_grad"):
        assert launches.get(name, 0) > 0, name
    _assert_same(ref, got, ["latents", "compressor.layers.0.attn.to_kv", "compressor.pos_emb",
                            "gca.0.attn_gate", "gca.3.ff_gate", "gca.0.attn.to_q",
                            "gca.3.attn.to_kv"])


def test_qd_selective_bptt_triton_equals_torch():
    model = tiny_lcirc(query_dependent=True, randomize_gates=True)
    ids = torch.randint(0, 256, (1, 4 * SEG))
    x = torch.randint(0, 256, (1, 5))
    q = torch.randint(0, 256, (1, 4))
    policy = bptt.Selective(steps=[2])                 # [0, 1] hoisted, 2 with a graph, 3 none
    ref = _train_pass(model, "torch", ids, x, query_ids=q, bptt=policy)
    got = _train_pass(model, "triton", ids, x, query_ids=q, bptt=policy)
    assert got[4].get("attn_bwd_dkdv", 0) > 0
    _assert_same(ref, got, ["mixer.attn_gate", "mixer.attn.to_kv", "compressor.layers.1",
                            "gca.0.attn_gate"])
    assert "latents" not in ref[3] or ref[3]["latents"].abs().sum() == 0   # step 0 not selected


def _infer(model, ids, x):
    LAUNCHES.clear()
    with torch.no_grad():
        logits = model(x, memory=model.compress(ids, segment_len=SEG)).logits
    return logits, sum(LAUNCHES.values())


def test_backend_env_var_switches_auto_models(monkeypatch):
    """LCIRC_BACKEND is read when the op set is bound (model built or `configure`d)."""
    model = tiny_lcirc(randomize_gates=True)
    ids = torch.randint(0, 256, (1, 2 * SEG + 2))       # two 8-token segments share a K/V product
    x = torch.randint(0, 256, (1, 4))
    monkeypatch.setenv(ENV_VAR, "torch")
    model.configure(backend="auto")
    assert model.resolved_backend() == "torch"
    ref, n_torch = _infer(model, ids, x)
    monkeypatch.setenv(ENV_VAR, "triton")
    model.configure(backend="auto")
    assert model.resolved_backend() == "triton"
    got, n_triton = _infer(model, ids, x)
    assert n_torch == 0 and n_triton > 0
    torch.testing.assert_close(got, ref, **TOL)
    model.configure(backend="torch")                   # an explicit per-model choice wins
    assert model.resolved_backend() == "torch" and _infer(model, ids, x)[1] == 0
    monkeypatch.delenv(ENV_VAR)
    model.configure(backend="auto")
    assert model.resolved_backend() == "torch"         # auto on CPU
    monkeypatch.setenv(ENV_VAR, "cuda")                # the extension needs CUDA tensors
    with pytest.raises(ValueError, match=ENV_VAR):
        model.configure(backend="auto")


# ---- --backend on the commands that run a model -------------------------------------------------

MODEL_COMMANDS = ("bench", "compress", "eval", "train")
TRAIN_YAML = str(Path(__file__).resolve().parents[1] / "train" / "configs" / "smollm2_kjv_copy.yaml")


def test_every_model_command_takes_backend_with_the_registered_choices():
    from lcirc_fast.backend import CHOICES
    from lcirc_fast.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for cmd in MODEL_COMMANDS:
        action = next((a for a in sub[cmd]._actions if a.dest == "backend"), None)
        assert action is not None, cmd
        assert tuple(action.choices) == CHOICES and action.default is None, cmd
        assert "cuda:" in action.help and "TRITON_INTERPRET" in action.help, cmd
    assert all(a.dest != "backend" for a in sub["convert"]._actions)   # convert runs no model


@pytest.mark.parametrize("argv", [
    ["compress", "{txt}", "--out", "{out}", "--backend", "cuda"],
    ["train", "--config", TRAIN_YAML, "--backend", "cuda"],
    ["bench", "--lengths", "64", "--out", "{dir}", "--backend", "cuda"],
])
def test_backend_that_cannot_run_here_is_one_line_exit_2(argv, tmp_path, capsys):
    from lcirc_fast.cli import main

    txt = tmp_path / "in.txt"
    txt.write_text("In the beginning.")
    fill = dict(txt=str(txt), out=str(tmp_path / "m.safetensors"), dir=str(tmp_path / "b"))
    assert main([a.format(**fill) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--backend cuda" in err and "CUDA extension" in err
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "b" / "bench.json").exists()


def test_backend_flag_switches_the_model(monkeypatch):
    from lcirc_fast.cli.options import apply_backend, backend_for_new_models

    monkeypatch.delenv(ENV_VAR, raising=False)
    model = tiny_lcirc()
    assert model.resolved_backend() == "torch"
    assert apply_backend(model, None).resolved_backend() == "torch"
    assert apply_backend(model, "triton").resolved_backend() == "triton"
    model.configure(backend="auto")
    with backend_for_new_models("triton"):             # what `lcirc bench` wraps its sweep in
        assert tiny_lcirc().resolved_backend() == "triton"
    assert ENV_VAR not in os.environ
    assert tiny_lcirc().resolved_backend() == "torch"


def test_train_backend_flag_sets_the_config_backend(monkeypatch):
    import lcirc_fast.training as training
    from lcirc_fast.cli import main

    seen = []

    def fake_run(cfg, **kw):
        seen.append(cfg.lcirc.backend)
        return {"opt_step": 0, "best_val": None, "final_val": None}

    monkeypatch.setattr(training, "run_training", fake_run)
    assert main(["train", "--config", TRAIN_YAML, "--backend", "torch", "--quiet"]) == 0
    assert seen == ["torch"]
