"""The training YAML's `lcirc:` section is an LCIRCConfig: every field settable, one default set."""
import dataclasses

import pytest
import torch
from lcirc_testutils import tiny_lcirc, tiny_llama

from lcirc_fast import LCIRCConfig
from lcirc_fast.config import InitRecipe
from lcirc_fast.errors import ConfigError
from lcirc_fast.training import config_from_dict
from lcirc_fast.training.builders import build_model
from lcirc_fast.training.config import FIELD_CHECKS, TrainConfig, _leaves


def test_one_set_of_defaults():
    assert type(TrainConfig().lcirc) is LCIRCConfig
    assert TrainConfig().lcirc == LCIRCConfig()


def test_every_field_is_settable_from_yaml(tiny_cfg):
    values = {"compressor_heads": 2, "compressor_head_dim": 8, "compressor_ffn": 24,
              "gca_layers": [1], "gca_heads": 2, "gca_head_dim": 4, "gca_ffn": 20,
              "mixer_heads": 1, "mixer_head_dim": 6, "mixer_ffn": 12, "query_dependent": True,
              "norm_eps": "1e-6", "backend": "torch", "allow_tf32": False,
              "kv_hoist_max_segments": 3, "kv_hoist_budget_bytes": 1024, "cuda_graphs": False,
              "compressor_input_layers": 1, "compressor_input_autocast": "bfloat16",
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
    with pytest.raises(ValueError, match=r"^InitRecipe\.latents_std = 0: must be a positive number or None"):
        InitRecipe(latents_std=0)
    with pytest.raises(ValueError, match=r"unknown InitRecipe fields: \['gate'\]"):
        LCIRCConfig(init={"gate": 1.0})


def test_the_section_is_checked_by_lcirc_config_alone():
    assert not [key for key in FIELD_CHECKS if key.startswith("lcirc")]
    assert not [key for key, *_ in _leaves(TrainConfig()) if key.startswith("lcirc")]


@pytest.mark.parametrize("name", sorted(f.name for f in dataclasses.fields(LCIRCConfig)))
def test_every_field_refuses_a_value_of_the_wrong_type_naming_its_key(tiny_cfg, name):
    wrong = "text" if name in ("gca_layers", "init") else {"a": 1}
    with pytest.raises(ConfigError, match=rf"^lcirc\.{name} = .*: must be "):
        config_from_dict(tiny_cfg(lcirc={name: wrong}))


@pytest.mark.parametrize("lcirc,message", [
    ({"max_segment_len": 10**12}, r"^lcirc\.max_segment_len = 1000000000000: must be at most 131072$"),
    ({"num_latents": 1e9}, r"^lcirc\.num_latents = 1000000000: must be at most 4096$"),
    ({"memory_cap": 2**40}, r"^lcirc\.memory_cap = 1099511627776: must be at most 16777216$"),
    ({"gca_layers": [0, 5000]}, r"^lcirc\.gca_layers = \[0, 5000\]: must be a non-empty list .*<= 1023"),
    ({"init": {"latents_std": "big"}}, r"^lcirc\.init\.latents_std = 'big': must be a positive number or null"),
    ({"allow_tf32": "yes"}, r"^lcirc\.allow_tf32 = 'yes': must be true or false or null"),
])
def test_bounds_and_yaml_spelling(tiny_cfg, lcirc, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(tiny_cfg(lcirc=lcirc))


def test_yaml_spellings_of_numbers_reach_lcirc_config(tiny_cfg):
    lc = config_from_dict(tiny_cfg(lcirc={"num_latents": 4.0, "norm_eps": "1e-6", "memory_cap": "8e0"})).lcirc
    assert (lc.num_latents, lc.norm_eps, lc.memory_cap) == (4, 1e-6, 8)
    assert type(lc.num_latents) is int and type(lc.memory_cap) is int


def test_validate_rechecks_a_changed_section(tiny_cfg):
    cfg = config_from_dict(tiny_cfg())
    cfg.lcirc.num_latents = 0
    with pytest.raises(ConfigError, match=r"^lcirc\.num_latents = 0: must be an integer >= 1$"):
        cfg.validate()
