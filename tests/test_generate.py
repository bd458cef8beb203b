"""Generation: KV cache and memory K/V cache give the same tokens as full recomputation."""
import pytest
import torch


def _count_projections(model):
    calls = {"n": 0}
    for blk in model.gca.values():
        blk.attn.to_kv.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    return calls


def _kv_products(model, monkeypatch):
    """Count memory K/V projections (each covers every GCA layer in one product)."""
    calls = {"n": 0, "layers": 0}
    real = model.injection.project

    def counting(hidden):
        calls["n"] += 1
        out = real(hidden)
        calls["layers"] += len(out)
        return out

    monkeypatch.setattr(model.injection, "project", counting)
    return calls


def test_greedy_cached_equals_uncached(model):
    mem = model.compress(torch.randint(0, 256, (2, 30)))
    x = torch.randint(0, 256, (2, 7))
    a = model.generate(x, memory=mem, max_new_tokens=8)
    b = model.generate(x, memory=mem, max_new_tokens=8, use_cache=False)
    assert a.shape == (2, 15) and torch.equal(a, b)
    assert torch.equal(a[:, :7], x)


def test_left_padded_batch_matches_single_rows(model):
    mem = model.compress(torch.randint(0, 256, (1, 30)))
    p1 = torch.randint(0, 256, (1, 4))
    p2 = torch.randint(0, 256, (1, 7))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), p1], 1), p2])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1] * 7])
    out = model.generate(batch, memory=mem, attention_mask=mask, max_new_tokens=5)
    r1 = model.generate(p1, memory=mem, max_new_tokens=5)
    r2 = model.generate(p2, memory=mem, max_new_tokens=5)
    assert torch.equal(out[0, -5:], r1[0, -5:])
    assert torch.equal(out[1, -5:], r2[0, -5:])


def test_memory_kv_projected_once_per_generate(model, monkeypatch):
    calls = _kv_products(model, monkeypatch)
    per_block = _count_projections(model)
    mem = model.compress(torch.randint(0, 256, (2, 30)))
    model.generate(torch.randint(0, 256, (2, 5)), memory=mem, max_new_tokens=6)
    assert calls["n"] == 1            # one fused product covers every GCA layer
    assert calls["layers"] == len(model.gca)
    assert per_block["n"] == 0        # no per-block re-projection during decoding
    model.generate(torch.randint(0, 256, (2, 5)), memory=mem, max_new_tokens=6)
    assert calls["n"] == 1            # cached in the memory for the next call
    model.generate(torch.randint(0, 256, (2, 5)), memory=mem, max_new_tokens=6, use_cache=False)
    assert calls["n"] == 1 + 6        # the uncached path re-projects at every step


def test_memory_kv_cache_invalidated_by_weight_update(model, monkeypatch):
    calls = _kv_products(model, monkeypatch)
    mem = model.compress(torch.randint(0, 256, (1, 30)))
    model.generate(torch.randint(0, 256, (1, 5)), memory=mem, max_new_tokens=2)
    with torch.no_grad():
        model.gca["3"].attn.to_kv.weight.mul_(1.5)
    model.generate(torch.randint(0, 256, (1, 5)), memory=mem, max_new_tokens=2)
    assert calls["n"] == 2


def test_sampling_reproducible_and_eos_stops(model):
    mem = model.compress(torch.randint(0, 256, (2, 30)))
    x = torch.randint(0, 256, (2, 5))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = model.generate(x, memory=mem, max_new_tokens=10, do_sample=True, top_k=20, top_p=0.9,
                       temperature=0.8, generator=g())
    b = model.generate(x, memory=mem, max_new_tokens=10, do_sample=True, top_k=20, top_p=0.9,
                       temperature=0.8, generator=g())
    assert torch.equal(a, b)
    greedy = model.generate(x, memory=mem, max_new_tokens=10)
    eos = int(greedy[0, 7])
    stopped = model.generate(x, memory=mem, max_new_tokens=10, eos_token_id=eos, pad_token_id=0)
    first = (greedy[0, 5:] == eos).nonzero()[0].item()
    assert torch.equal(stopped[0, :5 + first + 1], greedy[0, :5 + first + 1])
    assert (stopped[0, 5 + first + 1:] == 0).all()


def test_generate_without_memory_is_base(model):
    x = torch.randint(0, 256, (1, 6))
    out = model.generate(x, max_new_tokens=4)
    ids = x
    with torch.no_grad():
        for _ in range(4):
            ids = torch.cat([ids, model.base(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)


def test_generate_bad_options(model):
    x = torch.randint(0, 256, (1, 4))
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(x, max_new_tokens=-1)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(x, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="masks out every token"):
        model.generate(x, attention_mask=torch.zeros(1, 4, dtype=torch.long))


def test_prefill_keeps_only_last_logits_and_tokens_unchanged(model, monkeypatch):
    """The prompt's forward asks the base for the last position's logits only; the greedy tokens
    equal those of a forward that returns every position's logits."""
    from lcirc_fast.models import generation

    torch.manual_seed(4)
    mem = model.compress(torch.randint(0, 256, (2, 30)))
    x = torch.randint(0, 256, (2, 9))
    widths = []
    hook = model.base.register_forward_hook(lambda m, a, out: widths.append(out.logits.shape[1]))
    try:
        fast = model.generate(x, memory=mem, max_new_tokens=6)
        assert widths == [1] * 6                       # prefill included: one row of logits
        monkeypatch.setattr(generation, "_last_logits_only", lambda base: {})
        widths.clear()
        full = model.generate(x, memory=mem, max_new_tokens=6)
        assert widths[0] == 9
    finally:
        hook.remove()
    assert torch.equal(fast, full)
