"""compressor_input_layers: the Perceiver reads the frozen LLM's hidden states after k layers,
computed per segment, instead of the token embeddings."""
import pytest
import torch
from lcirc_testutils import tiny_lcirc, tiny_llama

from lcirc_fast import LCIRCConfig


def _expected(model, ids, k):
    """Hidden states after k layers of the plain base model on `ids` alone, RMS-normalised."""
    with torch.no_grad():
        h = model.base(input_ids=ids, output_hidden_states=True).hidden_states[k]
    emb = model.base.get_input_embeddings().weight
    rms = emb.pow(2).mean(-1).sqrt().mean()
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + model.config.norm_eps) * rms


def test_default_reads_token_embeddings():
    model = tiny_lcirc()
    ids = torch.randint(0, 256, (2, 8))
    assert torch.equal(model.segment_inputs(ids), model.base.get_input_embeddings()(ids))


@pytest.mark.parametrize("k", [1, 3])
def test_hidden_states_after_k_layers_per_segment(k):
    model = tiny_lcirc(compressor_input_layers=k, randomize_gates=True)
    ids = torch.randint(0, 256, (2, 3, 8))        # [batch, segments, length]
    hooks = [len(layer._forward_hooks) for layer in model.base.model.layers]
    ran = []
    handles = [layer.register_forward_pre_hook(lambda m, a, i=i: ran.append(i))
               for i, layer in enumerate(model.base.model.layers)]
    got = model.segment_inputs(ids)
    for h in handles:
        h.remove()
    assert ran == list(range(k))                  # the pass stops after layer k-1
    assert [len(layer._forward_hooks) for layer in model.base.model.layers] == hooks  # none left
    assert got.shape == (2, 3, 8, 64)
    for j in range(3):                             # each segment alone, positions from 0
        torch.testing.assert_close(got[:, j], _expected(model, ids[:, j], k), rtol=1e-5, atol=1e-5)


def test_contextual_compression_trains_and_matches_hoisting():
    model = tiny_lcirc(compressor_input_layers=2, randomize_gates=True)
    ids = torch.randint(0, 256, (2, 24))
    mem = model.compress(ids, segment_len=8)
    out = model(torch.randint(0, 256, (2, 6)), memory=mem, labels=torch.randint(0, 256, (2, 6)))
    out.loss.backward()
    assert model.compressor.pos_emb.grad is not None and model.compressor.pos_emb.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.base.parameters())
    with torch.no_grad():                          # graph-free steps hoist their K/V: same memory
        again = model.compress(ids, segment_len=8)
    torch.testing.assert_close(torch.cat(again.slots, 1), torch.cat(mem.slots, 1).detach())
    # a different first segment changes only the later slots through the recurrence, never
    # the second segment's own input
    other = ids.clone()
    other[:, :8] = (other[:, :8] + 1) % 256
    torch.testing.assert_close(model.segment_inputs(other[:, 8:16]), model.segment_inputs(ids[:, 8:16]))


def test_contextual_input_is_saved_and_validated(tmp_path):
    from lcirc_fast.models import LCIRCForCausalLM

    model = tiny_lcirc(compressor_input_layers=2)
    model.save_pretrained(tmp_path)
    loaded = LCIRCForCausalLM.from_pretrained(tmp_path, base=model.base)
    assert loaded.config.compressor_input_layers == 2
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="compressor_input_layers"):
            LCIRCConfig(compressor_input_layers=bad).validate()
    with pytest.raises(ValueError, match="exceeds the base model"):
        tiny_lcirc(base=tiny_llama(layers=2), compressor_input_layers=3)


def test_memory_fingerprint_covers_the_input_layers():
    base = tiny_llama()
    plain = tiny_lcirc(base=base)
    ctx = tiny_lcirc(base=base, compressor_input_layers=2)
    before_plain, before_ctx = plain.fingerprint(), ctx.fingerprint()
    assert before_plain != before_ctx
    with torch.no_grad():
        base.model.layers[1].mlp.down_proj.weight.add_(1e-3)     # an input layer changes
    assert ctx.fingerprint() != before_ctx and plain.fingerprint() == before_plain
    mid = ctx.fingerprint()
    with torch.no_grad():
        base.model.layers[3].mlp.down_proj.weight.add_(1e-3)     # a later layer does not matter
    assert ctx.fingerprint() == mid
    assert "compressor_input_layers" not in plain.config.compressor_signature()


def test_center_positions_uses_the_contextual_input_mean():
    from lcirc_fast.models.init_recipe import center_positions

    model = tiny_lcirc(compressor_input_layers=2)        # segment_len 8
    docs = [torch.randint(0, 256, (40,)), torch.randint(0, 256, (24,))]
    before = model.compressor.pos_emb.detach().clone()
    mean = center_positions(model, docs, max_chunks=4)
    ids = torch.cat(docs)
    starts = torch.linspace(0, ids.numel() - 8, 4).long().tolist()
    want = model.segment_inputs(torch.stack([ids[i:i + 8] for i in starts])).mean((0, 1))
    torch.testing.assert_close(mean, want)
    torch.testing.assert_close(model.compressor.pos_emb.detach(), before - want)
    emb_mean = model.base.get_input_embeddings()(ids).mean(0)
    assert not torch.allclose(mean, emb_mean, atol=1e-3)  # not the token-embedding mean


def test_autocast_contextual_pass_runs_its_products_in_bfloat16():
    base = tiny_llama()
    exact = tiny_lcirc(base=base, compressor_input_layers=2)
    fast = tiny_lcirc(base=base, compressor_input_layers=2, compressor_input_autocast="bfloat16")
    ids = torch.randint(0, 256, (2, 3, 8))
    dtypes = []
    handle = base.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda m, a, out: dtypes.append(out.dtype))
    want, got = exact.segment_inputs(ids), fast.segment_inputs(ids)
    handle.remove()
    assert dtypes == [torch.float32, torch.bfloat16]
    assert got.dtype == torch.float32 and got.shape == want.shape
    err = float((got - want).norm() / want.norm())
    assert 0 < err < 0.03                          # bfloat16's ~3 significant digits
    # the option is the model's: compression, training and the fingerprint all follow it
    mem = fast.compress(ids.reshape(2, 24), segment_len=8)
    assert torch.isfinite(torch.cat(mem.slots, 1)).all()
    assert fast.fingerprint() != exact.fingerprint()


def test_autocast_option_is_saved_and_validated(tmp_path):
    from lcirc_fast.models import LCIRCForCausalLM

    model = tiny_lcirc(compressor_input_layers=1, compressor_input_autocast="bfloat16")
    model.save_pretrained(tmp_path)
    loaded = LCIRCForCausalLM.from_pretrained(tmp_path, base=model.base)
    assert loaded.config.compressor_input_autocast == "bfloat16"
    for bad in ("float64", "bf16", 16, True):
        with pytest.raises(ValueError, match=r"compressor_input_autocast = .*must be bfloat16 or None"):
            LCIRCConfig(compressor_input_autocast=bad).validate()
    with pytest.raises(ValueError, match="applies to the contextual input only"):
        LCIRCConfig(compressor_input_autocast="bfloat16")
