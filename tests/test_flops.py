"""The analytic FLOP model against torch's FlopCounterMode, and its scaling properties."""
import dataclasses
import inspect
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lcirc_fast import LCIRCConfig, bptt
from lcirc_fast import flops as fl
from lcirc_fast.bench import get_preset
from lcirc_fast.bench.counting import count_flops
from lcirc_fast.segmenting import balanced_lengths

TOL = 0.01


def close(model: float, counted: float) -> bool:
    return abs(model - counted) <= TOL * counted


# --------------------------------------------------- small stand-alone re-implementations
class RefCrossAttn(nn.Module):
    """LN on the query side, K/V from `kv_in`, SDPA with no mask, output projection."""

    def __init__(self, d, heads, hd):
        super().__init__()
        self.h, self.hd = heads, hd
        self.norm = nn.LayerNorm(d)
        self.q = nn.Linear(d, heads * hd, bias=False)
        self.kv = nn.Linear(d, 2 * heads * hd, bias=False)
        self.out = nn.Linear(heads * hd, d, bias=False)

    def kv_proj(self, m):
        b, n, _ = m.shape
        k, v = self.kv(m).view(b, n, 2, self.h, self.hd).unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, k, v):
        b, t, _ = x.shape
        q = self.q(self.norm(x)).view(b, t, self.h, self.hd).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, t, -1))


class RefFF(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.norm, self.w1, self.w2 = nn.LayerNorm(d), nn.Linear(d, f, False), nn.Linear(f, d, False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(self.norm(x))))


class RefPerceiver(nn.Module):
    def __init__(self, s: fl.LCIRCShape):
        super().__init__()
        s = s.config
        d = s.hidden_size
        self.pos = nn.Parameter(torch.randn(256, d))
        self.norm_x = nn.ModuleList(nn.LayerNorm(d) for _ in range(s.compressor_layers))
        self.attn = nn.ModuleList(RefCrossAttn(d, s.compressor_heads, s.compressor_head_dim)
                                  for _ in range(s.compressor_layers))
        self.ff = nn.ModuleList(RefFF(d, s.compressor_ffn) for _ in range(s.compressor_layers))
        self.norm = nn.LayerNorm(d)

    def forward(self, z, e):
        x = e + self.pos[: e.shape[1]]
        for nx, a, f in zip(self.norm_x, self.attn, self.ff):
            k, v = a.kv_proj(nx(x))
            z = z + a(z, k, v)
            z = z + f(z)
        return self.norm(z)


class RefGCA(nn.Module):
    def __init__(self, s: fl.LCIRCShape, mixer: bool = False):
        super().__init__()
        s = s.config
        heads, head_dim, ffn = ((s.mixer_heads, s.mixer_head_dim, s.mixer_ffn) if mixer
                                else (s.gca_heads, s.gca_head_dim, s.gca_ffn))
        self.attn = RefCrossAttn(s.hidden_size, heads, head_dim)
        self.ff = RefFF(s.hidden_size, ffn)

    def forward(self, x, memory, kv=None):
        k, v = kv if kv is not None else self.attn.kv_proj(memory)
        x = x + math.tanh(0.5) * self.attn(x, k, v)
        return x + math.tanh(0.5) * self.ff(x)


SHAPE = fl.LCIRCShape(
    LCIRCConfig(num_latents=6, compressor_layers=3, compressor_heads=4, compressor_head_dim=16,
                compressor_ffn=96, gca_layers=[0, 3], gca_heads=3, gca_head_dim=8, gca_ffn=80,
                segment_len=40, max_segment_len=80, query_dependent=True).resolve(
        SimpleNamespace(hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96,
                        vocab_size=256)),
    window=64, query_len=7)


@torch.no_grad()
def test_compressor_step_matches_counter():
    torch.manual_seed(0)
    ref = RefPerceiver(SHAPE)
    for seg_len in (40, 73):
        z, e = torch.randn(2, SHAPE.config.num_latents, 48), torch.randn(2, seg_len, 48)
        counted, _ = count_flops(lambda: ref(z, e))
        model = 2 * fl.compressor_step(SHAPE, seg_len).matmul  # batch of 2
        assert close(model, counted), (model, counted)


@torch.no_grad()
def test_gca_block_and_mixer_match_counter():
    torch.manual_seed(0)
    gca = RefGCA(SHAPE)
    x, mem = torch.randn(1, 29, 48), torch.randn(1, 50, 48)
    counted, _ = count_flops(lambda: gca(x, mem))
    assert close(fl.gca_block(SHAPE, 29, 50).matmul, counted)
    kv = gca.attn.kv_proj(mem)
    counted_cached, _ = count_flops(lambda: gca(x, mem, kv))
    assert close(fl.gca_block(SHAPE, 29, 50, project_kv=False).matmul, counted_cached)
    assert close(fl.gca_memory_kv(SHAPE, 50).matmul, counted - counted_cached)
    lat, q = torch.randn(1, SHAPE.config.num_latents, 48), torch.randn(1, SHAPE.query_len, 48)
    mixer = RefGCA(SHAPE, mixer=True)          # sized like the compressor, as the model builds it
    c = SHAPE.config
    assert (c.mixer_heads, c.mixer_ffn) == (c.compressor_heads, c.compressor_ffn)
    counted_mix, _ = count_flops(lambda: mixer(lat, q))
    assert close(fl.mixer_step(SHAPE).matmul, counted_mix)
    apart = fl.LCIRCShape(dataclasses.replace(c, mixer_heads=2, mixer_head_dim=5, mixer_ffn=30),
                          SHAPE.window, SHAPE.query_len)
    counted_apart, _ = count_flops(lambda: RefGCA(apart, mixer=True)(lat, q))
    assert close(fl.mixer_step(apart).matmul, counted_apart)
    assert not close(fl.mixer_step(apart).matmul, counted_mix)


def tiny_llama(attn="sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=512)
    torch.manual_seed(0)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=attn).eval(), cfg


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@torch.no_grad()
def test_llm_forward_and_decode_match_counter(attn):
    model, cfg = tiny_llama(attn)
    llm = fl.LLMShape.from_hf_config(cfg)
    ids = torch.randint(0, 256, (1, 96))
    counted, out = count_flops(lambda: model(ids, use_cache=True))
    # the counter sees the full (masked) score matrix
    assert close(fl.llm_forward(llm, 96, causal="full").matmul, counted)
    assert fl.llm_forward(llm, 96, causal="half").matmul < counted
    nxt = torch.randint(0, 256, (1, 1))
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    counted_dec, _ = count_flops(lambda: model(nxt, **{key: out.past_key_values}))
    assert close(fl.llm_forward(llm, 1, past=96, causal="full").matmul, counted_dec)
    assert close(fl.full_decode_token(llm, 96, causal="full").matmul, counted_dec)


def test_llm_backward_frozen_matches_counter():
    model, cfg = tiny_llama("sdpa")
    model.requires_grad_(False)
    llm = fl.LLMShape.from_hf_config(cfg)
    emb = torch.randn(1, 64, 64, requires_grad=True)
    out = model(inputs_embeds=emb)
    counted, _ = count_flops(lambda: out.logits.sum().backward())
    fwd = fl.llm_forward(llm, 64, causal="full")
    assert close(fl.backward(fwd, trainable=False).matmul, counted)


def test_half_convention_counts_triangle():
    llm = fl.LLMShape(64, 1, 4, 4, 16, 128, 256)
    full = fl.llm_layer(llm, 10, causal="full").attn
    half = fl.llm_layer(llm, 10, causal="half").attn
    assert full == 4 * 10 * 10 * 64 and half == 4 * 55 * 64


def test_split_uses_the_2k_rule_of_segmenting():
    s = get_preset("llama2-7b").shape()
    sp = fl.split(s, 4096 + 10003)
    assert sp.segments == balanced_lengths(10003, 2048) == [2503, 2500, 2500, 2500]
    assert sp.memory == 4 * 64 and sp.window == 4096 and fl.split(s, 100).segments == []


def test_lcirc_grows_linearly_and_full_attention_quadratically():
    p = get_preset("llama2-7b")
    s, llm = p.shape(), p.llm
    ns = [s.window + k * 2 * s.config.segment_len for k in (8, 16, 32, 64)]
    lc = [fl.lcirc_prefill(llm, s, n).flops for n in ns]
    fa = [fl.full_prefill(llm, n).flops for n in ns]
    assert all(b > a for a, b in zip(lc, lc[1:]))
    inc = [b - a for a, b in zip(lc, lc[1:])]
    # per added segment the compressor cost is constant; the GCA term grows with memory, so
    # increments (over doubling spans) grow about 2x, far from the 4x of a quadratic term.
    per_tok = [d / (b - a) for d, a, b in zip(inc, ns, ns[1:])]
    assert max(per_tok) / min(per_tok) < 1.5
    fa_inc = [(b - a) / (nb - na) for a, b, na, nb in zip(fa, fa[1:], ns, ns[1:])]
    assert fa_inc[-1] / fa_inc[0] > 2
    assert fl.lcirc_prefill(llm, s, s.window).flops == fl.full_prefill(llm, s.window).flops


def test_llama2_7b_at_128k_is_under_two_percent():
    p = get_preset("llama2-7b")
    row = fl.sweep(p.llm, p.shape(), [131072])[0]
    assert row["segments"] == 62 and row["memory"] == 3968
    assert row["ratio_half"] < 0.02
    assert 0.008 < row["ratio_full"] < 0.015
    assert 100e12 < row["lcirc_flops_half"] < 130e12      # the spec's ~115 TFLOPs estimate


def test_decode_cache_and_training_policies_order():
    p = get_preset("llama2-7b")
    s, llm, n = p.shape(), p.llm, 4096 + 3200 // 64 * 2048
    cached, recomputed = fl.lcirc_decode_token(llm, s, n), fl.lcirc_decode_token(llm, s, n, False)
    extra = recomputed.matmul - cached.matmul
    assert extra == pytest.approx(s.num_gca * fl.gca_memory_kv(s, 3200).matmul)
    full, trunc, sel = (fl.train_step(llm, s, n, pol).flops
                        for pol in ("full", "truncated:1", "selective:8"))
    assert full > sel > trunc
    assert fl.grad_steps("selective:8:replace", 50) == pytest.approx(50 * (1 - (49 / 50) ** 8))
    with pytest.raises(ValueError, match="BPTT policy"):
        fl.grad_steps("sometimes", 3)
    assert fl.grad_steps(bptt.Selective(steps=[1, 4, 9]), 5) == 2.0
    assert fl.grad_steps({"kind": "truncated", "k": 3}, 2) == 2.0
    assert fl.grad_steps(bptt.Full(), 7) == 7.0


def test_bad_shapes_raise_clear_errors():
    with pytest.raises(ValueError, match="num_kv_heads"):
        fl.LLMShape(64, 2, 4, 3, 16, 128, 256)
    with pytest.raises(ValueError, match="hidden_size"):
        fl.LLMShape(0, 2, 4, 2, 16, 128, 256)
    with pytest.raises(ValueError, match="causal"):
        fl.causal_pairs(4, 0, "quarter")
    with pytest.raises(ValueError, match="context length"):
        fl.split(get_preset("tiny").shape(), 0)
    with pytest.raises(ValueError, match="resolved LCIRCConfig"):
        fl.LCIRCShape(LCIRCConfig())
    with pytest.raises(ValueError, match="query_len must be >= 1"):
        get_preset("tiny").shape(query_dependent=True)
    assert get_preset("tiny").shape(query_len=5).query_len == 0   # no mixer: no query
    with pytest.raises(ValueError, match="unknown model"):
        get_preset("llama-9000")


# --------------------------------------------------------------- the package's own model
def tiny_lcirc(query_dependent=False):
    from lcirc_fast import LCIRCConfig, LCIRCForCausalLM

    base, _ = tiny_llama("sdpa")
    torch.manual_seed(1)
    cfg = LCIRCConfig(num_latents=4, compressor_layers=2, segment_len=16, max_segment_len=32,
                      query_dependent=query_dependent)
    model = LCIRCForCausalLM.from_base(base, cfg)
    model.configure(backend="torch")
    return model


def shapes(model, window, query_len=0):
    return (fl.LLMShape.from_hf_config(model.base.config),
            fl.LCIRCShape(model.config, window=window, query_len=query_len))


@pytest.mark.parametrize("qd", [False, True])
@torch.no_grad()
def test_real_model_compress_forward_generate_match_counter(qd):
    model = tiny_lcirc(qd)
    llm, s = shapes(model, window=24, query_len=5 if qd else 0)
    ctx = torch.randint(0, 256, (1, 100))
    kw = dict(query_ids=torch.randint(0, 256, (1, 5))) if qd else {}
    counted, mem = count_flops(lambda: model.compress(ctx, **kw))
    assert mem.num_segments == len(balanced_lengths(100, s.config.segment_len))
    assert close(fl.compress(s, 100).matmul, counted)
    m = len(mem)
    assert m == fl.split(s, 124).memory
    win = torch.randint(0, 256, (1, 24))
    counted, _ = count_flops(lambda: model(win, memory=mem))
    assert close(fl.lcirc_window(llm, s, 24, m, causal="full").matmul, counted)
    mem.invalidate_cache()
    counted, _ = count_flops(lambda: model.generate(win, memory=mem, max_new_tokens=5))
    # the prompt's forward computes the last position's logits only, as every decode step does
    expect = fl.lcirc_window(llm, s, 24, m, causal="full", logits=1) + fl.total(
        fl.lcirc_window(llm, s, 1, m, causal="full", past=24 + j, cached_kv=True)
        for j in range(4))
    assert close(expect.matmul, counted)


def test_real_model_training_step_matches_counter():
    from lcirc_fast import bptt

    model = tiny_lcirc()
    llm, s = shapes(model, window=24)
    ctx, win = torch.randint(0, 256, (1, 100)), torch.randint(0, 256, (1, 24))
    for policy, name in ((bptt.Full(), "full"), (bptt.Truncated(2), "truncated:2")):
        def step():
            mem = model.compress(ctx, bptt=policy)
            model(win, memory=mem, labels=win).loss.backward()
        counted, _ = count_flops(step)
        expect = fl.train_step(llm, s, 124, name, causal="full").matmul
        assert close(expect, counted), (name, expect, counted)


@pytest.mark.parametrize("content, match", [
    ("{not json", "is not a JSON model config"),
    ("[1, 2]", "holds a JSON list"),
    ('{"hidden_size": 64}', "lacks"),
    ('{"hidden_size": 0, "num_hidden_layers": 2, "num_attention_heads": 4, '
     '"intermediate_size": 128, "vocab_size": 256}', "hidden_size=0"),
])
def test_config_json_errors_name_the_file(tmp_path, content, match):
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match) as err:
        fl.LLMShape.from_json(tmp_path)
    assert str(path) in str(err.value)
