"""The training YAML's `lcirc:` section is an LCIRCConfig: every field settable, one default set."""
import dataclasses

import torch
from lcirc_testutils import tiny_lcirc, tiny_llama

from lcirc_fast import LCIRCConfig
from lcirc_fast.config import InitRecipe
from lcirc_fast.training import config_from_dict
from lcirc_fast.training.builders import build_model
from lcirc_fast.training.config import TrainConfig


def test_one_set_of_defaults():
    assert type(TrainConfig().lcirc) is LCIRCConfig
    assert TrainConfig().lcirc == LCIRCConfig()


def test_every_field_is_settable_from_yaml(tiny_cfg):
    values = {"compressor_heads": 2, "compressor_head_dim": 8, "compressor_ffn": 24,
              "gca_layers": [1], "gca_heads": 2, "gca_head_dim": 4, "gca_ffn": 20,
              "mixer_heads": 1, "mixer_head_dim": 6, "mixer_ffn": 12, "query_dependent": True,
              "norm_eps": "1e-6", "backend": "torch", "allow_tf32": False,
              "kv_hoist_max_segments": 3, "kv_hoist_budget_bytes": 1024, "cuda_graphs": False,
              "compressor_input_layers": 1, "extra": {"note": "x"},
              "init": {"latents_std": 0.02, "attn_gate_init": 0.25}}
    untouched = {"hidden_size", "num_hidden_layers", "vocab_size"}   # copied from the base
    fields = {f.name for f in dataclasses.fields(LCIRCConfig)}
    assert fields - untouched == set(values) | set(tiny_cfg()["lcirc"])   # the test sets them all
    cfg = config_from_dict(tiny_cfg(stage=2, lcirc=values, data={"source": "synthetic_tokens"}))
    lc = cfg.lcirc
    assert lc.norm_eps == 1e-6 and lc.init == InitRecipe(latents_std=0.02, attn_gate_init=0.25)
    model = build_model(cfg, tiny_llama())
    got = model.config
    for name, value in values.items():
        if name not in ("norm_eps", "init"):
            assert getattr(got, name) == value, name
    assert model.compressor.heads == 2 and model.compressor.head_dim == 8
    assert model.mixer.attn.heads == 1 and model.mixer.attn.head_dim == 6
    assert model.compressor.layers[0].ff.w1.out_features == 24
    assert model.gca["1"].ff.w1.out_features == 20 and list(model.gca) == ["1"]
    assert all(float(b.attn_gate.detach()) == 0.25 for b in model.gca.values())
    assert model.ops.backend == "torch" and not model.ops.allow_tf32


def test_init_recipe_is_applied_when_the_model_is_built():
    recipe = InitRecipe(pos_emb_std=0.05, latents_std=0.02, attn_gate_init=0.5,
                        compressor_q_init_scale=8.0, gca_q_init_scale=4.0)
    plain = tiny_lcirc(seed=3)
    model = tiny_lcirc(seed=3, init=recipe)
    assert float(model.latents.detach().std()) < 0.05 < float(plain.latents.detach().std())
    assert float(model.compressor.pos_emb.detach().std()) < 0.1
    for name, blk in model.gca.items():
        assert float(blk.attn_gate.detach()) == 0.5 and float(blk.ff_gate.detach()) == 0.0
        torch.testing.assert_close(blk.attn.to_q.weight, 4.0 * plain.gca[name].attn.to_q.weight)
    for a, b in zip(model.compressor.layers, plain.compressor.layers):
        torch.testing.assert_close(a.attn.to_q.weight, 8.0 * b.attn.to_q.weight)
    # the recipe travels with the config (saved with save_pretrained)
    assert LCIRCConfig.from_dict(model.config.to_dict()).init == recipe


def test_bad_recipe_values_are_refused():
    import pytest

    with pytest.raises(ValueError, match=r"InitRecipe\.latents_std must be a finite number > 0"):
        InitRecipe(latents_std=0)
    with pytest.raises(ValueError, match=r"unknown InitRecipe fields: \['gate'\]"):
        LCIRCConfig(init={"gate": 1.0})
