"""Input checks of the library API: LCIRCConfig fields, memory files, token batches, generate
options and from_pretrained directories. Each error must name the problem."""
import numpy as np
import pytest
from lcirc_testutils import tiny_llama

from lcirc_fast import LCIRCConfig
from lcirc_fast.errors import ConfigError

# ---------------------------------------------------------------------- LCIRCConfig

_SIZES = ("num_latents", "compressor_layers", "max_segment_len", "compressor_heads",
          "compressor_head_dim", "compressor_ffn", "segment_len", "gca_heads", "gca_head_dim",
          "gca_ffn", "memory_cap", "hidden_size", "num_hidden_layers", "vocab_size")


@pytest.mark.parametrize("name", _SIZES)
@pytest.mark.parametrize("bad", [0, -3, True, 2.0, "8"])
def test_config_refuses_bad_sizes(name, bad):
    with pytest.raises(ConfigError, match=rf"LCIRCConfig\.{name} must be a positive int.*got "
                                          rf"{bad!r}"):
        LCIRCConfig(**{name: bad})


@pytest.mark.parametrize("name", ["num_latents", "compressor_layers", "max_segment_len"])
def test_config_refuses_none_where_there_is_no_default(name):
    with pytest.raises(ConfigError, match=rf"{name} must be a positive int, got None"):
        LCIRCConfig(**{name: None})


@pytest.mark.parametrize("name", ["segment_len", "compressor_heads", "gca_heads", "gca_ffn"])
def test_config_zero_is_not_the_default(name):
    """0 used to be replaced by the default through `x or default`."""
    with pytest.raises(ConfigError, match=rf"{name} .*got 0"):
        LCIRCConfig(**{name: 0, "max_segment_len": 32})


@pytest.mark.parametrize("field,bad,words", [
    ("query_dependent", "no", "true or false"),
    ("query_dependent", 1, "true or false"),
    ("backend", "cuda", "auto, torch, triton"),
    ("backend", None, "auto, torch, triton"),
    ("norm_eps", 0.0, "finite number > 0"),
    ("norm_eps", float("nan"), "finite number > 0"),
    ("norm_eps", "1e-5", "finite number > 0"),
    ("norm_eps", True, "finite number > 0"),
    ("compressor_input_layers", -1, "int >= 0"),
    ("compressor_input_layers", None, "int >= 0"),
    ("gca_layers", [], "non-empty list"),
    ("gca_layers", 3, "non-empty list"),
    ("gca_layers", [0, True], "ints >= 0"),
    ("gca_layers", [0, -1], "ints >= 0"),
    ("gca_layers", [0, 1.0], "ints >= 0"),
    ("gca_layers", [2, 2], "distinct"),
    ("extra", [], "must be a dict"),
])
def test_config_refuses_bad_values(field, bad, words):
    with pytest.raises(ConfigError, match=rf"LCIRCConfig\.{field} .*{words}") as err:
        LCIRCConfig(**{field: bad})
    assert repr(bad) in str(err.value) or str(bad) in str(err.value)


def test_config_none_means_the_base_models_value():
    cfg = LCIRCConfig(num_latents=4, max_segment_len=32).resolve(tiny_llama().config)
    assert (cfg.compressor_heads, cfg.gca_heads, cfg.gca_ffn, cfg.segment_len) == (4, 4, 128, 16)
    explicit = LCIRCConfig(num_latents=4, max_segment_len=32, compressor_heads=2, gca_heads=1,
                           gca_ffn=7, segment_len=5).resolve(tiny_llama().config)
    assert (explicit.compressor_heads, explicit.gca_heads, explicit.gca_ffn,
            explicit.segment_len) == (2, 1, 7, 5)


def test_config_round_trips_and_normalises():
    cfg = LCIRCConfig(num_latents=np.int64(4), gca_layers=(3, 0), norm_eps=1,
                      query_dependent=True, max_segment_len=32, memory_cap=8)
    assert type(cfg.num_latents) is int and cfg.gca_layers == [3, 0] and cfg.norm_eps == 1.0
    assert LCIRCConfig.from_dict(cfg.to_dict()) == cfg
    resolved = cfg.resolve(tiny_llama().config)
    assert resolved.gca_layers == [0, 3]
    assert LCIRCConfig.from_dict(resolved.to_dict()) == resolved


def test_config_from_dict_errors():
    with pytest.raises(ConfigError, match="mapping"):
        LCIRCConfig.from_dict([("num_latents", 4)])
    with pytest.raises(ConfigError, match=r"unknown LCIRCConfig fields: \['num_latent'\]"):
        LCIRCConfig.from_dict({"num_latent": 4})
    with pytest.raises(ConfigError, match="segment_len=5000 exceeds max_segment_len=4096"):
        LCIRCConfig.from_dict({"segment_len": 5000})
    with pytest.raises(ConfigError, match="gca_layers .9. out of range"):
        LCIRCConfig(gca_layers=[0, 9]).resolve(tiny_llama().config)
    with pytest.raises(ConfigError, match="hidden_size=32 does not match"):
        LCIRCConfig(hidden_size=32).resolve(tiny_llama().config)
