"""The real SmolLM2-135M (30 layers, 9 heads / 3 KV heads, tied embeddings) on real KJV text."""
import pytest
import torch

from lcirc_fast import CompressedMemory, LCIRCConfig, LCIRCForCausalLM

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real():
    from lcirc_fast.assets import kjv_text, load_smollm2

    base, tok = load_smollm2(torch.float32)
    text = kjv_text()
    genesis = text[:6000]
    torch.manual_seed(0)
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(num_latents=16, compressor_layers=2,
                                                         max_segment_len=512, segment_len=128))
    ctx = tok(genesis, return_tensors="pt", add_special_tokens=False).input_ids[:, :600]
    prompt = tok("And God said, Let there be", return_tensors="pt").input_ids
    return model, tok, ctx, prompt


def test_real_shapes_and_zero_gates(real):
    model, tok, ctx, prompt = real
    cfg = model.config
    assert cfg.hidden_size == 576 and cfg.num_hidden_layers == 30
    assert cfg.gca_layers == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 29]
    assert (cfg.compressor_heads, cfg.compressor_head_dim) == (9, 64)
    with torch.no_grad():
        mem = model.compress(ctx)
        assert mem.num_segments == 4 and len(mem) == 64          # 600 tokens, ~128 rule
        assert torch.equal(model(prompt, memory=mem).logits, model.base(prompt).logits)


def test_real_save_load_and_cached_generation(real, tmp_path):
    model, tok, ctx, prompt = real
    with torch.no_grad():
        for blk in model.gca.values():
            blk.attn_gate.fill_(0.05)
        try:
            mem = model.compress(ctx)
            ref = model(prompt, memory=mem).logits
            assert not torch.equal(ref, model.base(prompt).logits)
            mem.save(tmp_path / "genesis.safetensors")
            loaded = CompressedMemory.load(tmp_path / "genesis.safetensors", model)
            assert torch.equal(model(prompt, memory=loaded).logits, ref)
            fast = model.generate(prompt, memory=loaded, max_new_tokens=5)
            slow = model.generate(prompt, memory=loaded, max_new_tokens=5, use_cache=False)
            assert torch.equal(fast, slow)
            text = tok.decode(fast[0, prompt.shape[1]:])
            assert len(text.strip()) > 0
        finally:
            for blk in model.gca.values():
                blk.attn_gate.zero_()
