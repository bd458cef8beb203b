"""LCIRCForCausalLM: wrapping, zero-gate identity, memory injection, masking, bad input."""
import pytest
import torch
from lcirc_testutils import tiny_lcirc, tiny_llama

from lcirc_fast import CompressedMemory, LCIRCConfig, LCIRCForCausalLM
from lcirc_fast.errors import DataError


@pytest.mark.parametrize("heads,kv_heads,tied", [(4, 4, False), (4, 2, True), (4, 1, False)])
def test_zero_gates_equal_base_logits(heads, kv_heads, tied):
    base = tiny_llama(heads=heads, kv_heads=kv_heads, tied=tied)
    model = tiny_lcirc(base)
    ctx = torch.randint(0, 256, (2, 40))
    x = torch.randint(0, 256, (2, 17))
    mem = model.compress(ctx)
    assert len(mem) == mem.num_segments * 4 and mem.num_segments == 5
    with torch.no_grad():
        ref = base(x).logits
        out = model(x, memory=mem).logits
        plain = model(x).logits
    assert torch.equal(out, ref)
    assert torch.equal(plain, ref)


def test_gates_open_changes_logits_and_memory_none_is_base(model):
    x = torch.randint(0, 256, (1, 9))
    mem = model.compress(torch.randint(0, 256, (1, 30)))
    with torch.no_grad():
        assert not torch.allclose(model(x, memory=mem).logits, model.base(x).logits)
        assert torch.equal(model(x).logits, model.base(x).logits)


def test_trainable_parameters_and_frozen_base():
    model = tiny_lcirc(query_dependent=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("base.") for n in names)
    assert "latents" in names and any(n.startswith("compressor.") for n in names)
    assert any(n.startswith("gca.") for n in names) and any(n.startswith("mixer.") for n in names)
    assert model.config.gca_layers == [0, 3]
    for blk in (model.gca["0"], model.mixer):   # [1]-shaped fp32, so ZeRO-3 can partition them
        for gate in (blk.attn_gate, blk.ff_gate):
            assert gate.dtype == torch.float32 and tuple(gate.shape) == (1,)


def test_loss_backward_reaches_all_trainable_parts(model):
    ctx = torch.randint(0, 256, (2, 24))
    x = torch.randint(0, 256, (2, 10))
    mem = model.compress(ctx)
    model(x, memory=mem, labels=x).loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.base.parameters())


def test_gca_every_token_sees_whole_memory(model):
    """No mask between memory and tokens: changing the oldest slot changes every position."""
    mem = model.compress(torch.randint(0, 256, (1, 24)))
    x = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        a = model(x, memory=mem).logits
        mem.slots[0].add_(1.0)             # the memory's caches follow an in-place edit
        b = model(x, memory=mem).logits
    assert ((a - b).abs().amax(-1) > 1e-6).all()


def test_stacked_memories_of_different_lengths_are_masked(model):
    c1 = torch.randint(0, 256, (1, 16))
    c2 = torch.randint(0, 256, (1, 40))
    m1, m2 = model.compress(c1), model.compress(c2)
    stacked = model.compress([c1[0], c2[0]])
    assert stacked.lengths.tolist() == [len(m1), len(m2)] and len(stacked) == len(m2)
    x = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        out = model(x, memory=stacked).logits
        r1 = model(x[:1], memory=m1).logits
        r2 = model(x[1:], memory=m2).logits
    torch.testing.assert_close(out[0], r1[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], r2[0], rtol=1e-5, atol=1e-5)
    # padding must really be ignored: poison it
    stacked.hidden[0, len(m1):] = 1e4
    with torch.no_grad():
        torch.testing.assert_close(model(x, memory=stacked).logits[0], r1[0], rtol=1e-5,
                                   atol=1e-5)


def test_batch_one_memory_broadcasts(model):
    mem = model.compress(torch.randint(0, 256, (1, 20)))
    x = torch.randint(0, 256, (3, 5))
    with torch.no_grad():
        out = model(x, memory=mem).logits
        for i in range(3):
            torch.testing.assert_close(out[i], model(x[i:i + 1], memory=mem).logits[0])


def test_qd_model_equals_lcirc_at_init_and_needs_query():
    base = tiny_llama()
    plain = tiny_lcirc(base, seed=3)
    qd = tiny_lcirc(base, seed=3, query_dependent=True)
    qd.load_state_dict(plain.state_dict(), strict=False)
    ctx = torch.randint(0, 256, (2, 30))
    q = torch.randint(0, 256, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(qd.compress(ctx, query_ids=q).hidden, plain.compress(ctx).hidden)
    with pytest.raises(ValueError, match="query_ids"):
        qd.compress(ctx)
    with pytest.raises(ValueError, match="query_dependent=False"):
        plain.compress(ctx, query_ids=q)
    with torch.no_grad():
        qd.mixer.attn_gate.fill_(0.5)
        a = qd.compress(ctx, query_ids=q).hidden
        b = qd.compress(ctx, query_ids=torch.randint(0, 256, (2, 5))).hidden
    assert not torch.allclose(a, b)


def test_qd_query_mask_padding_ignored():
    qd = tiny_lcirc(query_dependent=True, randomize_gates=True)
    ctx = torch.randint(0, 256, (2, 20))
    q = torch.randint(0, 256, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        full = qd.compress(ctx, query_ids=q, query_mask=mask).hidden
        q2 = q.clone()
        q2[0, 4:] = 7
        again = qd.compress(ctx, query_ids=q2, query_mask=mask).hidden
        short = qd.compress(ctx[:1], query_ids=q[:1, :4]).hidden
    torch.testing.assert_close(full, again)
    torch.testing.assert_close(full[:1], short, rtol=1e-5, atol=1e-5)


class TestBadInput:
    def test_empty_context(self, model):
        with pytest.raises(ValueError, match="empty"):
            model.compress(torch.zeros(1, 0, dtype=torch.long))

    def test_segment_longer_than_position_table(self, model):
        with pytest.raises(ValueError, match="position table"):
            model.compress(torch.randint(0, 256, (1, 40)), segment_len=33)
        with pytest.raises(ValueError, match="position table"):
            model.compress(torch.randint(0, 256, (1, 40)), boundaries=[0, 5, 40])

    def test_bad_boundaries(self, model):
        with pytest.raises(ValueError, match="increasing"):
            model.compress(torch.randint(0, 256, (1, 20)), boundaries=[0, 10, 10, 20])
        with pytest.raises(ValueError, match="end at the context length"):
            model.compress(torch.randint(0, 256, (1, 20)), boundaries=[0, 10, 19])

    def test_ids_outside_vocab(self, model):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            model.compress(torch.tensor([[1, 2, 256]]))
        with pytest.raises(ValueError, match="outside the vocabulary"):
            model(torch.tensor([[-1, 2]]))

    def test_wrong_dtype(self, model):
        with pytest.raises(DataError, match="context_ids must hold integer token ids"):
            model.compress(torch.rand(1, 10))

    def test_wrong_device(self, model):
        ids = torch.randint(0, 256, (1, 10), device="meta")
        with pytest.raises(ValueError, match="is on meta"):
            model.compress(ids)

    def test_mismatched_batch(self, model):
        mem = model.compress(torch.randint(0, 256, (2, 20)))
        with pytest.raises(ValueError, match="batch size"):
            model(torch.randint(0, 256, (3, 5)), memory=mem)

    def test_memory_dtype(self, model):
        mem = model.compress(torch.randint(0, 256, (1, 20)))
        mem = CompressedMemory([s.double() for s in mem.slots], mem.state.double(),
                               mem.num_segments, mem.context_tokens, owner=model)
        with pytest.raises(ValueError, match="dtype"):
            model(torch.randint(0, 256, (1, 5)), memory=mem)

    def test_memory_from_other_config(self, model):
        other = tiny_lcirc(num_latents=2)
        mem = other.compress(torch.randint(0, 256, (1, 20)))
        with pytest.raises(ValueError, match="different model"):
            model(torch.randint(0, 256, (1, 5)), memory=mem)

    def test_config_errors(self):
        with pytest.raises(ValueError, match="num_latents"):
            LCIRCConfig(num_latents=0).validate()
        with pytest.raises(ValueError, match="out of range"):
            LCIRCForCausalLM.from_base(tiny_llama(), LCIRCConfig(gca_layers=[0, 9]))
        with pytest.raises(ValueError, match="backend"):
            LCIRCConfig(backend="gpu").validate()
        with pytest.raises(TypeError, match="Llama-style"):
            LCIRCForCausalLM.from_base(torch.nn.Linear(2, 2), LCIRCConfig())

    def test_memory_type(self, model):
        with pytest.raises(TypeError, match="CompressedMemory"):
            model(torch.randint(0, 256, (1, 5)), memory=torch.zeros(1, 4, 64))

    def test_labels_shape(self, model):
        with pytest.raises(ValueError, match="labels shape"):
            model(torch.randint(0, 256, (1, 5)), labels=torch.randint(0, 256, (1, 4)))


def test_remove_hooks_restores_base(model):
    mem = model.compress(torch.randint(0, 256, (1, 20)))
    x = torch.randint(0, 256, (1, 5))
    model.remove_hooks()
    with torch.no_grad():
        assert torch.equal(model(x, memory=mem).logits, model.base(x).logits)


def test_stack_rejects_mixed_models(model):
    other = tiny_lcirc(seed=5)
    a = model.compress(torch.randint(0, 256, (1, 20)))
    b = other.compress(torch.randint(0, 256, (1, 20)))
    with pytest.raises(ValueError, match="different models"):
        CompressedMemory.stack([a, b])


def _with_0dim_gates(model):
    """The model with its gates swapped for 0-dim parameters (the layout before [1] gates)."""
    blocks = list(model.gca.values()) + ([model.mixer] if model.mixer is not None else [])
    for blk in blocks:
        for name in ("attn_gate", "ff_gate"):
            setattr(blk, name, torch.nn.Parameter(getattr(blk, name).detach().reshape(())))
    return model


def test_bf16_residual_keeps_dtype_with_1d_gates():
    """A [1]-shaped fp32 gate would promote a bf16 residual to fp32; the block must not."""
    model = tiny_lcirc(tiny_llama().to(torch.bfloat16), randomize_gates=True)
    blk = model.gca["0"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 64, generator=g).to(torch.bfloat16)
    k, v = blk.project_memory(torch.randn(2, 7, 64, generator=g).to(torch.bfloat16))
    with torch.no_grad():
        out = blk(x, k, v)
        old = _with_0dim_gates(tiny_lcirc(tiny_llama().to(torch.bfloat16), randomize_gates=True))
        want = old.gca["0"](x, k, v)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, want) and not torch.equal(out, x)


def test_0dim_gates_keep_fingerprint():
    model = tiny_lcirc(query_dependent=True, randomize_gates=True)
    fp = model.fingerprint()
    assert _with_0dim_gates(model).fingerprint() == fp
    with torch.no_grad():
        model.mixer.attn_gate.add_(1.0)
    assert model.fingerprint() != fp


def test_save_pretrained_with_0dim_gates_still_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    from lcirc_fast.memory import content_checksum

    base = tiny_llama()
    model = tiny_lcirc(base, query_dependent=True, randomize_gates=True)
    model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "lcirc_model.safetensors"
    state = {k: v.reshape(()) if k.endswith("_gate") else v for k, v in load_file(path).items()}
    assert sum(v.dim() == 0 for v in state.values()) == 2 * (len(model.gca) + 1)
    meta = {"format": "lcirc_fast.model", "version": "2"}
    meta["checksum"] = content_checksum(meta, state)
    save_file(state, path, metadata=meta)
    back = LCIRCForCausalLM.from_pretrained(tmp_path / "m", base)
    assert tuple(back.mixer.ff_gate.shape) == (1,)
    assert torch.equal(back.mixer.ff_gate, model.mixer.ff_gate)
    ids, q, x = torch.randint(0, 256, (1, 30)), torch.randint(0, 256, (1, 4)), torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        assert torch.equal(back(x, memory=back.compress(ids, query_ids=q)).logits,
                           model(x, memory=model.compress(ids, query_ids=q)).logits)
