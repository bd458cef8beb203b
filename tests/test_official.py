"""Reference checkpoint layout: import, export, and parity with an independent re-statement."""
import pytest
import reference_lcirc as ref
import torch
from lcirc_testutils import tiny_lcirc, tiny_llama


def _random_official(model, seed=0):
    """A checkpoint in the reference layout with random weights and non-zero gates."""
    g = torch.Generator().manual_seed(seed)
    ckpt = model.official_state_dict()
    for part in ("compressor_state_dict", "Xattn_layers_state_dict", "mixer_state_dict"):
        for k, v in ckpt.get(part, {}).items():
            if k.endswith("gate"):
                ckpt[part][k] = torch.rand((), generator=g) * 0.8 + 0.2
            else:
                ckpt[part][k] = torch.randn(v.shape, generator=g) * (0.2 if v.dim() > 1 else 1)
    ckpt["latent_state_dict"]["latent"] = torch.randn(ckpt["latent_state_dict"]["latent"].shape,
                                                      generator=g)
    return ckpt


@pytest.mark.parametrize("qd", [False, True])
def test_reference_parity_features_and_logits(tmp_path, qd):
    base = tiny_llama()
    d = base.config.hidden_size
    model = tiny_lcirc(base, max_segment_len=d, query_dependent=qd)   # reference table is d x d
    ckpt = _random_official(model)
    torch.save(ckpt, tmp_path / "LCIRC_checkpoint_epoch0_final.pt")
    model.load_official_checkpoint(tmp_path / "LCIRC_checkpoint_epoch0_final.pt")

    ids = torch.randint(0, 256, (2, 45))
    bounds = [0, 20, 33, 45]
    q = torch.randint(0, 256, (2, 4)) if qd else None
    x = torch.randint(0, 256, (2, 9))
    heads = model.config.compressor_heads
    with torch.no_grad():
        mem = model.compress(ids, boundaries=bounds, query_ids=q)
        want_mem = ref.compress(ckpt, base.get_input_embeddings(), ids, bounds,
                                model.config.compressor_layers, heads, query_ids=q)
        torch.testing.assert_close(mem.hidden, want_mem, rtol=1e-5, atol=1e-5)
        got = model(x, memory=mem).logits
        want = ref.logits(ckpt, base, x, want_mem, model.config.gca_layers, heads)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(got, base(x).logits, atol=1e-3)   # the gates are really open


def test_export_import_roundtrip_identical_logits():
    base = tiny_llama()
    a = tiny_lcirc(base, seed=1, randomize_gates=True)
    b = tiny_lcirc(base, seed=2)
    b.load_official_checkpoint(a.official_state_dict())
    ids = torch.randint(0, 256, (1, 30))
    x = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        assert torch.equal(a(x, memory=a.compress(ids)).logits, b(x, memory=b.compress(ids)).logits)
    assert a.fingerprint() == b.fingerprint()
    ck = a.official_state_dict()
    assert len(ck["compressor_state_dict"]) == 11 * a.config.compressor_layers + 3  # keys of the layout table
    assert len(ck["Xattn_layers_state_dict"]) == 11 * len(a.config.gca_layers)
    gate = ck["Xattn_layers_state_dict"]["0.attn_gate"]     # the reference's 0-dim fp32 gates
    assert gate.dim() == 0 and gate.dtype == torch.float32
    assert tuple(b.gca["0"].attn_gate.shape) == (1,)           # ours have shape [1]
    assert torch.equal(b.gca["0"].attn_gate.reshape(()), gate) and gate != 0


def test_import_errors(tmp_path):
    model = tiny_lcirc()
    ck = model.official_state_dict()
    with pytest.raises(FileNotFoundError):
        model.load_official_checkpoint(tmp_path / "missing.pt")
    bad = dict(ck)
    del bad["latent_state_dict"]
    with pytest.raises(KeyError, match="latent_state_dict"):
        model.load_official_checkpoint(bad)
    wide = tiny_lcirc(max_segment_len=64)
    with pytest.raises(ValueError, match="max_segment_len=64"):
        model.load_official_checkpoint(wide.official_state_dict())
    qd = tiny_lcirc(query_dependent=True)
    with pytest.raises(ValueError, match="QD-LCIRC"):
        model.load_official_checkpoint(qd.official_state_dict())
    extra = {**ck, "compressor_state_dict": {**ck["compressor_state_dict"], "layers.0.9.w": 1}}
    with pytest.raises(KeyError, match="unknown key"):
        model.load_official_checkpoint(extra)
