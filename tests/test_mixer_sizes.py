"""QD mixer sizes: they follow the compressor's (as in the reference code), can be set on their
own, survive save_pretrained / from_pretrained and the reference checkpoint layout."""
import json
import re

import pytest
import reference_lcirc as ref
import torch
from lcirc_testutils import tiny_lcirc, tiny_llama

from lcirc_fast import LCIRCConfig, LCIRCForCausalLM
from lcirc_fast.errors import ConfigError

# the tiny base has 4 heads x 16, MLP 128; the compressor is sized apart from it
COMPRESSOR = dict(compressor_heads=2, compressor_head_dim=8, compressor_ffn=24)


def _shapes(block):
    a = block.attn
    return (a.heads, a.head_dim, tuple(a.to_q.weight.shape), tuple(a.to_kv.weight.shape),
            tuple(block.ff.w1.weight.shape))


def _randomize(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("base."):
                continue
            if n.endswith("gate"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.8 + 0.2)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() > 1 else 1))


def _logits(model, seed=5):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (2, 40), generator=g)
    q = torch.randint(0, 256, (2, 5), generator=g)
    x = torch.randint(0, 256, (2, 7), generator=g)
    with torch.no_grad():
        return model(x, memory=model.compress(ids, boundaries=[0, 17, 40], query_ids=q)).logits


def test_mixer_follows_the_compressor_by_default():
    model = tiny_lcirc(query_dependent=True, **COMPRESSOR)
    cfg = model.config
    assert (cfg.mixer_heads, cfg.mixer_head_dim, cfg.mixer_ffn) == (2, 8, 24)
    assert _shapes(model.mixer) == (2, 8, (16, 64), (32, 64), (24, 64))
    assert _shapes(model.gca["0"]) == (4, 16, (64, 64), (128, 64), (128, 64))  # the base's


def test_mixer_sizes_set_on_their_own():
    model = tiny_lcirc(query_dependent=True, mixer_heads=1, mixer_head_dim=4, mixer_ffn=10,
                       **COMPRESSOR)
    assert _shapes(model.mixer) == (1, 4, (4, 64), (8, 64), (10, 64))
    assert model.compressor.heads == 2 and model.compressor.layers[0].ff.w1.weight.shape[0] == 24
    a, b = _logits(model), _logits(model)
    assert torch.equal(a, b) and torch.isfinite(a).all()


@pytest.mark.parametrize("name", ["mixer_heads", "mixer_head_dim", "mixer_ffn"])
@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "4"])
def test_mixer_sizes_validated(name, bad):
    with pytest.raises(ConfigError, match=rf"LCIRCConfig\.{name} = {re.escape(repr(bad))}: must be an "
                                          r"integer >= 1"):
        LCIRCConfig(**{name: bad})


def test_mixer_sizes_from_dict_and_resolve():
    cfg = LCIRCConfig.from_dict({"mixer_heads": 3, "num_latents": 4, "max_segment_len": 32})
    r = cfg.resolve(tiny_llama().config)
    assert (r.mixer_heads, r.mixer_head_dim, r.mixer_ffn) == (3, 16, 128)
    assert r.is_resolved


def test_official_checkpoint_with_compressor_sized_apart_imports_with_same_logits():
    base = tiny_llama()
    d = base.config.hidden_size
    src = tiny_lcirc(base, seed=1, query_dependent=True, max_segment_len=d, **COMPRESSOR)
    _randomize(src)
    ckpt = src.official_state_dict()
    mix = ckpt["mixer_state_dict"]
    # the reference layout: the mixer is built with the compressor's heads x head dim and MLP
    assert tuple(mix["attn.to_q.weight"].shape) == (16, d)
    assert tuple(mix["ff.1.weight"].shape) == (24, d)
    assert tuple(ckpt["Xattn_layers_state_dict"]["0.ff.1.weight"].shape) == (128, d)

    dst = tiny_lcirc(base, seed=2, query_dependent=True, max_segment_len=d, **COMPRESSOR)
    assert not torch.equal(_logits(src), _logits(dst))
    dst.load_official_checkpoint(ckpt)
    assert torch.equal(_logits(src), _logits(dst))

    # and against the independent restatement of the reference math
    g = torch.Generator().manual_seed(9)
    ids = torch.randint(0, 256, (2, 40), generator=g)
    q = torch.randint(0, 256, (2, 5), generator=g)
    x = torch.randint(0, 256, (2, 7), generator=g)
    with torch.no_grad():
        mem = dst.compress(ids, boundaries=[0, 17, 40], query_ids=q)
        want_mem = ref.compress(ckpt, base.get_input_embeddings(), ids, [0, 17, 40],
                                dst.config.compressor_layers, dst.config.compressor_heads,
                                query_ids=q)
        torch.testing.assert_close(mem.hidden, want_mem, rtol=1e-5, atol=1e-5)
        got = dst(x, memory=mem).logits
        want = ref.logits(ckpt, base, x, want_mem, dst.config.gca_layers, dst.config.gca_heads)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    plain = tiny_lcirc(base, seed=1, query_dependent=True, max_segment_len=d, **COMPRESSOR)
    with torch.no_grad():   # the mixer matters: zero mixer gates give another memory
        plain.load_official_checkpoint({**ckpt, "mixer_state_dict": {
            k: torch.zeros_like(v) if k.endswith("gate") else v for k, v in mix.items()}})
        assert not torch.allclose(plain.compress(ids, boundaries=[0, 17, 40], query_ids=q).hidden,
                                  mem.hidden, atol=1e-4)


def test_save_pretrained_round_trips_mixer_sizes(tmp_path):
    base = tiny_llama()
    model = tiny_lcirc(base, query_dependent=True, mixer_heads=1, mixer_head_dim=4,
                       mixer_ffn=10, **COMPRESSOR)
    _randomize(model)
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "lcirc_config.json").read_text())["lcirc_config"]
    assert (saved["mixer_heads"], saved["mixer_head_dim"], saved["mixer_ffn"]) == (1, 4, 10)
    back = LCIRCForCausalLM.from_pretrained(tmp_path / "m", base)
    assert _shapes(back.mixer) == _shapes(model.mixer)
    assert torch.equal(_logits(back), _logits(model))

    default = tiny_lcirc(base, query_dependent=True, **COMPRESSOR)   # the resolved sizes are saved
    default.save_pretrained(tmp_path / "d")
    saved = json.loads((tmp_path / "d" / "lcirc_config.json").read_text())["lcirc_config"]
    assert (saved["mixer_heads"], saved["mixer_head_dim"], saved["mixer_ffn"]) == (2, 8, 24)


def test_config_saved_before_mixer_sizes_loads_gca_sized_mixer(tmp_path):
    """A QD model saved before the mixer fields existed had a mixer sized like a GCA block."""
    base = tiny_llama()
    old = tiny_lcirc(base, query_dependent=True, mixer_heads=4, mixer_head_dim=16, mixer_ffn=128,
                     **COMPRESSOR)
    _randomize(old)
    old.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "lcirc_config.json"
    info = json.loads(path.read_text())
    for k in ("mixer_heads", "mixer_head_dim", "mixer_ffn"):
        del info["lcirc_config"][k]
    path.write_text(json.dumps(info))
    back = LCIRCForCausalLM.from_pretrained(tmp_path / "m", base)
    assert _shapes(back.mixer) == (4, 16, (64, 64), (128, 64), (128, 64))
    assert torch.equal(_logits(back), _logits(old))
