"""Config resolution, segmenting rules and backend selection."""
import pytest
import torch
from lcirc_testutils import tiny_llama

from lcirc_fast import LCIRCConfig
from lcirc_fast.backend import ENV_VAR, resolve_backend
from lcirc_fast.config import SIZES, FieldError, default_gca_layers
from lcirc_fast.errors import ConfigError
from lcirc_fast.segmenting import (
    balanced_boundaries,
    balanced_lengths,
    check_boundaries,
    fixed_boundaries,
    random_boundaries,
)


def test_default_gca_layers_match_paper():
    assert default_gca_layers(32) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31]
    assert default_gca_layers(30) == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]
    assert default_gca_layers(4) == [0, 3]
    assert default_gca_layers(1) == [0]


def test_resolve_fills_from_base_and_roundtrips():
    cfg = LCIRCConfig(num_latents=8).resolve(tiny_llama(heads=4, kv_heads=2).config)
    assert (cfg.compressor_heads, cfg.compressor_head_dim, cfg.compressor_ffn) == (4, 16, 128)
    assert cfg.is_resolved and cfg.hidden_size == 64 and cfg.vocab_size == 256
    assert LCIRCConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown LCIRCConfig fields"):
        LCIRCConfig.from_dict({"num_latent": 3})
    with pytest.raises(ValueError, match="hidden_size"):
        LCIRCConfig(hidden_size=32).resolve(tiny_llama().config)
    with pytest.raises(ValueError, match="memory_cap"):
        LCIRCConfig(memory_cap=3, num_latents=4).validate()
    with pytest.raises(ValueError, match="segment_len"):
        LCIRCConfig(segment_len=5000).validate()


@pytest.mark.parametrize("name", sorted(SIZES))
def test_every_size_has_an_upper_bound_named_in_the_error(name):
    bound = SIZES[name].hi
    with pytest.raises(FieldError, match=rf"^LCIRCConfig\.{name} = {bound + 1}: must be at most {bound}$") as err:
        LCIRCConfig(**{name: bound + 1})
    assert (err.value.field, err.value.value) == (name, bound + 1)


def test_huge_position_table_is_refused_before_anything_is_allocated():
    with pytest.raises(ConfigError, match=r"^LCIRCConfig\.max_segment_len = 1000000000000: must be at most"):
        LCIRCConfig(max_segment_len=10**12)


def test_from_dict_drops_the_empty_extra_of_older_files():
    assert LCIRCConfig.from_dict({"num_latents": 4, "extra": {}}) == LCIRCConfig(num_latents=4)
    with pytest.raises(ConfigError, match=r"unknown LCIRCConfig fields: \['extra'\]"):
        LCIRCConfig.from_dict({"extra": {"note": 1}})


def test_balanced_lengths_is_the_2k_rule():
    assert balanced_lengths(0, 2048) == [] and balanced_lengths(1000, 2048) == [1000]
    assert balanced_lengths(4095, 2048) == [4095]
    assert balanced_lengths(10_003, 2048) == [2503, 2500, 2500, 2500]   # q = 4, 2048 + 1955 // 4
    assert balanced_boundaries(10_003, 2048) == [0, 2503, 5003, 7503, 10_003]
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match="tokens to segment"):
            balanced_lengths(bad, 16)
    with pytest.raises(ValueError, match="segment_len"):
        balanced_lengths(10, 0)


def test_fixed_and_balanced_boundaries():
    assert fixed_boundaries(10, 4) == [0, 4, 8, 10]
    assert balanced_boundaries(1000, 2048) == [0, 1000]
    b = balanced_boundaries(126_976, 2048)             # 128K - 4K window: 62 segments of 2048
    assert len(b) == 63 and all(y - x == 2048 for x, y in zip(b, b[1:]))
    b = balanced_boundaries(10_000, 2048)
    lens = [y - x for x, y in zip(b, b[1:])]
    assert sum(lens) == 10_000 and len(lens) == 4
    assert all(2048 <= n < 4096 for n in lens) and lens[0] >= lens[1]
    with pytest.raises(ValueError, match="empty"):
        fixed_boundaries(0, 4)


def test_random_boundaries_length_weighted():
    g = torch.Generator().manual_seed(0)
    lens = []
    for _ in range(30):
        b = random_boundaries(50_000, g, 64, 4032)
        assert b[0] == 0 and b[-1] == 50_000
        lens += [y - x for x, y in zip(b, b[1:-1])]
    mean = sum(lens) / len(lens)
    assert all(64 <= n <= 4032 for n in lens)
    assert 2550 < mean < 2830                      # E[l] under P(l) ∝ l is about 2,689


def test_check_boundaries_errors():
    assert check_boundaries([0, 3, 7], 7, 8) == [0, 3, 7]
    with pytest.raises(ValueError, match="start at 0"):
        check_boundaries([3, 7], 7, 8)
    with pytest.raises(ValueError, match="position table"):
        check_boundaries([0, 9], 9, 8)


def test_backend_resolution(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    monkeypatch.setenv(ENV_VAR, "torch")
    assert resolve_backend("auto", "cpu") == "torch"
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_backend("auto", "cpu")
    monkeypatch.delenv(ENV_VAR)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        resolve_backend("triton", "cpu")
    with pytest.raises(ValueError, match="backend"):
        resolve_backend("cuda", "cpu")
