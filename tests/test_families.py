"""Every base family in BASE_ADAPTERS, as a tiny random model built in code: zero-gate logits equal
to the base's, the compressor reading what the first layer reads, compress + generate, gradients
reaching the LCIRC weights; and the loaders and CLI over a non-Llama directory."""
import json

import pytest
import torch

from lcirc_fast import CompressedMemory, LCIRCConfig, LCIRCForCausalLM
from lcirc_fast.errors import ConfigError
from lcirc_fast.models import BASE_ADAPTERS, load_base

COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=128, vocab_size=256, max_position_embeddings=256,
              pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
LLAMA3_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=32, rope_theta=500000.0)
# case -> (model_type, config overrides); every BASE_ADAPTERS key needs at least one case
FAMILIES = {
    "llama": ("llama", {}),
    "llama3-rope-scaling": ("llama", dict(rope_parameters=LLAMA3_ROPE)),
    "mistral": ("mistral", dict(sliding_window=8)),
    "qwen2": ("qwen2", {}),
    "qwen3": ("qwen3", dict(head_dim=16)),
    "gemma": ("gemma", dict(head_dim=16)),
    "gemma2": ("gemma2", dict(head_dim=16, sliding_window=8)),
    "phi3": ("phi3", {}),
    "olmo": ("olmo", {}),
    "olmo2": ("olmo2", {}),
    "granite": ("granite", dict(embedding_multiplier=12.0, residual_multiplier=0.5,
                                logits_scaling=2.0, attention_multiplier=0.25)),
    "starcoder2": ("starcoder2", {}),
    "smollm3": ("smollm3", dict(no_rope_layer_interval=2)),
    "gemma3_text": ("gemma3_text", dict(head_dim=16, sliding_window=8)),
    "olmo3": ("olmo3", {}),
    "cohere": ("cohere", {}),
    "glm": ("glm", dict(head_dim=16)),
    "glm4": ("glm4", dict(head_dim=16)),
    "helium": ("helium", dict(head_dim=16)),
}
EAGER_ONLY = ("gemma2",)          # no SDPA path in transformers for these
LCIRC = dict(num_latents=4, compressor_layers=1, max_segment_len=16, segment_len=8)


def tiny_base(model_type, seed=0, **overrides):
    """A small random causal LM of `model_type` in eval mode (fp32)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, **{**COMMON, **overrides})
    torch.manual_seed(seed)
    attn = "eager" if model_type in EAGER_ONLY else "sdpa"
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()


def family_base(case):
    model_type, extra = FAMILIES[case]
    return tiny_base(model_type, **extra)


def open_gates(model, value=0.5):
    with torch.no_grad():
        for blk in model.gca.values():
            blk.attn_gate.fill_(value)
            blk.ff_gate.fill_(value)


def ids(*shape, seed=1):
    return torch.randint(3, COMMON["vocab_size"], shape, generator=torch.Generator().manual_seed(seed))


def test_every_adapter_has_a_case():
    assert {mt for mt, _ in FAMILIES.values()} == set(BASE_ADAPTERS)


@pytest.mark.parametrize("case", FAMILIES)
def test_zero_gates_equal_base_and_open_gates_differ(case):
    base = family_base(case)
    x = ids(2, 12)
    mask = torch.ones_like(x)
    mask[1, :3] = 0                                    # a left-padded row
    with torch.no_grad():
        ref = base(input_ids=x, attention_mask=mask).logits
        model = LCIRCForCausalLM.from_base(base, LCIRCConfig(**LCIRC))
        mem = model.compress(ids(2, 40, seed=2))
        assert torch.equal(model(x, memory=mem, attention_mask=mask).logits, ref)
        open_gates(model)
        assert not torch.allclose(model(x, memory=mem, attention_mask=mask).logits, ref)
        model.remove_hooks()
        assert torch.equal(base(input_ids=x, attention_mask=mask).logits, ref)


@pytest.mark.parametrize("case", FAMILIES)
def test_compressor_reads_what_the_first_layer_reads(case):
    base = family_base(case)
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(**LCIRC))
    x = ids(2, 12)
    seen = {}

    def grab(_module, args, kwargs):
        seen["x"] = model.adapter.hidden_states(args, kwargs)

    handle = model.adapter.decoder_layers(base)[0].register_forward_pre_hook(grab,
                                                                             with_kwargs=True)
    with torch.no_grad():
        base(input_ids=x)
        handle.remove()
        assert torch.equal(model.segment_inputs(x), seen["x"])
        assert torch.equal(model.embed_tokens(x), seen["x"])
        raw = base.get_input_embeddings().weight[x]
        scale = model.adapter.input_scale(base.config)
        assert torch.equal(raw, seen["x"]) == (scale == 1.0)   # Gemma, Granite: scaled


@pytest.mark.parametrize("case", FAMILIES)
def test_compress_then_greedy_generate_matches_recomputation(case):
    base = family_base(case)
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(**LCIRC))
    open_gates(model)
    prompt = ids(1, 5, seed=3)
    with torch.no_grad():
        mem = model.compress(ids(1, 30, seed=4))
        out = model.generate(prompt, memory=mem, max_new_tokens=3)   # KV cache through the adapter
        seq = prompt
        for _ in range(3):                                           # no cache: full recompute
            nxt = model(seq, memory=mem).logits[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], 1)
    assert out.shape == (1, 8) and torch.equal(out, seq)


@pytest.mark.parametrize("case", FAMILIES)
def test_training_step_reaches_lcirc_weights(case):
    base = family_base(case)
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(**LCIRC))
    x = ids(2, 10)
    model(x, memory=model.compress(ids(2, 24, seed=5)), labels=x).loss.backward()
    for name, blk in model.gca.items():     # closed gates: only the gates' own gradient
        assert blk.attn_gate.grad is not None and blk.attn_gate.grad.abs().sum() > 0, name
    model.zero_grad(set_to_none=True)
    open_gates(model, 0.1)
    model(x, memory=model.compress(ids(2, 24, seed=5)), labels=x).loss.backward()
    assert model.latents.grad.abs().sum() > 0
    for n, p in model.compressor.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    for name, blk in model.gca.items():
        assert blk.attn.to_q.weight.grad.abs().sum() > 0, name
        assert blk.attn.to_kv.weight.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in base.parameters())


@pytest.mark.parametrize("case", FAMILIES)
def test_answer_loss_equals_the_full_logits_loss(case):
    """`model.loss` (logits only from the first labelled position) equals forward's loss and
    its gradients, with each family's own logit scaling / soft-capping applied."""
    model = LCIRCForCausalLM.from_base(family_base(case), LCIRCConfig(**LCIRC))
    open_gates(model, 0.3)
    x, ctx = ids(2, 12), ids(2, 24, seed=5)
    labels = torch.full_like(x, -100)
    labels[0, 7:], labels[1, 9:] = x[0, 7:], x[1, 9:]
    grads = []
    for fn in (lambda m: model(x, memory=m, labels=labels).loss,
               lambda m: model.loss(x, labels, memory=m)):
        model.zero_grad(set_to_none=True)
        loss = fn(model.compress(ctx))
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (full, g_full), (part, g_part) = grads
    torch.testing.assert_close(part, full, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_part, g_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_adapter_finds_hidden_states_by_position_or_keyword():
    from lcirc_fast.models import BaseAdapter

    a, x, y = BaseAdapter(), torch.zeros(1), torch.ones(1)
    assert a.hidden_states((x, "m"), {"k": 1}) is x
    args, kwargs = a.with_hidden_states((x, "m"), {"k": 1}, y)
    assert args[0] is y and args[1:] == ("m",) and kwargs == {"k": 1}
    assert a.hidden_states((), {"hidden_states": x}) is x
    args, kwargs = a.with_hidden_states((), {"hidden_states": x, "k": 1}, y)
    assert args == () and kwargs["hidden_states"] is y and kwargs["k"] == 1


def test_injection_applies_to_a_layer_called_by_keyword():
    base = family_base("llama")
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(**LCIRC, gca_layers=[0]))
    open_gates(model)
    layer = base.model.layers[0]
    x = torch.randn(1, 6, COMMON["hidden_size"])
    pe = base.model.rotary_emb(x, position_ids=torch.arange(6)[None])
    with torch.no_grad():
        plain = layer(x, position_embeddings=pe)
        mem = model.compress(ids(1, 20))
        with model.inject(mem, 1):
            by_position = layer(x, position_embeddings=pe)
            by_keyword = layer(hidden_states=x, position_embeddings=pe)
    assert torch.equal(by_position, by_keyword) and not torch.allclose(by_position, plain)


def test_fingerprint_covers_the_embedding_scale():
    base = family_base("granite")

    def fingerprint():
        torch.manual_seed(0)
        model = LCIRCForCausalLM.from_base(base, LCIRCConfig(**LCIRC))
        model.remove_hooks()
        return model.fingerprint()

    before = fingerprint()
    assert fingerprint() == before
    base.config.embedding_multiplier = 6.0
    assert fingerprint() != before


def test_save_and_load_pretrained_round_trip_non_llama(tmp_path):
    base = family_base("qwen3")
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(**LCIRC))
    open_gates(model)
    model.save_pretrained(tmp_path / "lcirc")
    saved = json.loads((tmp_path / "lcirc" / "lcirc_config.json").read_text())
    assert saved["base_model"] == "qwen3"
    model.remove_hooks()
    again = LCIRCForCausalLM.from_pretrained(tmp_path / "lcirc", base=base)
    assert again.adapter is BASE_ADAPTERS["qwen3"]
    own, other = model.lcirc_state_dict(), again.lcirc_state_dict()
    assert own.keys() == other.keys() and all(torch.equal(own[k], other[k]) for k in own)
    with torch.no_grad():
        mem = again.compress(ids(1, 20))
        mem2 = CompressedMemory.load(_saved(mem, tmp_path), again)
        x = ids(1, 6, seed=6)
        assert torch.equal(again(x, memory=mem2).logits, again(x, memory=mem).logits)


def _saved(mem, tmp_path):
    path = tmp_path / "mem.safetensors"
    mem.save(path)
    return path


def test_gemma_center_positions_and_contextual_input_use_the_scaled_embeddings():
    from lcirc_fast.models.init_recipe import center_positions

    base = family_base("gemma")
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(**LCIRC))
    doc = ids(64)
    pos = model.compressor.pos_emb.detach().clone()
    mean = center_positions(model, [doc])
    with torch.no_grad():
        expected = model.embed_tokens(doc).mean(0)
    torch.testing.assert_close(mean, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.compressor.pos_emb, pos - expected, rtol=1e-4, atol=1e-4)

    ctx = LCIRCForCausalLM.from_base(base, LCIRCConfig(**LCIRC, compressor_input_layers=1))
    with torch.no_grad():
        table = ctx.embed_tokens(torch.arange(COMMON["vocab_size"]))
        inputs = ctx.segment_inputs(ids(2, 12))
    rms = lambda t: t.pow(2).mean(-1).sqrt()  # noqa: E731
    torch.testing.assert_close(rms(inputs), torch.full_like(rms(inputs), float(rms(table).mean())),
                               rtol=1e-3, atol=0)


# ---------------------------------------------------------------------- unsupported families
def test_unsupported_model_type_refused_naming_the_families():
    base = tiny_base("gpt2", n_embd=32, n_layer=1, n_head=2, vocab_size=64)
    with pytest.raises(ConfigError, match="'gpt2' is not supported") as err:
        LCIRCForCausalLM.from_base(base, LCIRCConfig(**LCIRC))
    assert all(family in str(err.value) for family in BASE_ADAPTERS)
    assert "BASE_ADAPTERS" in str(err.value)


def test_non_model_refused():
    with pytest.raises(TypeError, match="Hugging Face causal LM"):
        LCIRCForCausalLM.from_base(torch.nn.Linear(2, 2), LCIRCConfig())


def test_backbone_without_lm_head_refused():
    base = family_base("qwen2")
    with pytest.raises(ConfigError, match="pass the causal LM"):
        LCIRCForCausalLM.from_base(base.model, LCIRCConfig(**LCIRC))


def test_unsupported_directory_refused_before_weights_load(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")   # never read
    with pytest.raises(ConfigError, match="'gpt2' is not supported; LCIRC wraps") as err:
        load_base(tmp_path)
    assert str(tmp_path) in str(err.value) and "gemma2" in str(err.value)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 4}))
    with pytest.raises(ConfigError, match="names no model_type"):
        load_base(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_base(tmp_path)


def test_random_base_refuses_unsupported_config():
    from transformers import GPT2Config

    from lcirc_fast.models.base_loader import random_base

    with pytest.raises(ConfigError, match="'gpt2' is not supported"):
        random_base(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))


# ---------------------------------------------------------------------- loaders and the CLI
@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    """A tiny random Gemma directory with a tokenizer (vocab 32000)."""
    from lcirc_fast.assets import llama_sp_tokenizer

    d = tmp_path_factory.mktemp("gemma")
    tiny_base("gemma", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              num_key_value_heads=1, head_dim=8, intermediate_size=32,
              vocab_size=32000).save_pretrained(d)
    llama_sp_tokenizer().save_pretrained(d)
    return d


def test_load_base_reads_a_gemma_directory(gemma_dir):
    from transformers import GemmaForCausalLM

    model, tok = load_base(gemma_dir, torch.bfloat16)
    assert isinstance(model, GemmaForCausalLM) and not model.training
    assert model.dtype == torch.bfloat16 and tok is not None and tok.vocab_size == 32000
    ref, _ = load_base(str(gemma_dir), tokenizer=False)
    assert _ is None and ref.dtype == torch.float32
    saved = GemmaForCausalLM.from_pretrained(gemma_dir)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(),
                                                 saved.state_dict().values()))


def test_build_base_reads_a_gemma_directory_and_tiny_random(gemma_dir):
    from transformers import GemmaForCausalLM, LlamaForCausalLM

    from lcirc_fast.training.builders import build_base
    from lcirc_fast.training.config import TrainConfig

    cfg = TrainConfig()
    cfg.base.name = str(gemma_dir)
    base, tok = build_base(cfg, torch.device("cpu"))
    assert isinstance(base, GemmaForCausalLM) and tok is not None
    cfg.base.name = "tiny_random"
    a, tok = build_base(cfg, torch.device("cpu"))
    b, _ = build_base(cfg, torch.device("cpu"))
    assert isinstance(a, LlamaForCausalLM) and tok is None
    assert a.config.hidden_size == cfg.base.tiny["hidden_size"]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name", ["smollm2", "smollm2-135m"])
def test_smollm2_aliases_load_the_bundled_model(name, monkeypatch):
    from lcirc_fast.assets import SMOLLM2_ALIASES, SMOLLM2_NAME
    from lcirc_fast.cli.compress import BUNDLED_BASE, check_base

    calls = []

    def fake(dtype):
        calls.append(dtype)
        return torch.nn.Linear(1, 1), "tok"

    monkeypatch.setattr("lcirc_fast.assets.load_smollm2", fake)
    model, tok = load_base(name, torch.bfloat16)
    assert calls == [torch.bfloat16] and tok == "tok" and not model.training
    assert BUNDLED_BASE == SMOLLM2_NAME == "smollm2-135m" and "smollm2" in SMOLLM2_ALIASES
    check_base(name)   # no error


def test_unknown_name_refused():
    with pytest.raises(ConfigError, match="neither a bundled name .*smollm2-135m.*tiny_random"):
        load_base("llama-9000")


def test_cli_compress_with_a_gemma_base(gemma_dir, tmp_path, capsys):
    from lcirc_fast.cli import main

    src = tmp_path / "text.txt"
    src.write_text("In the beginning God created the heaven and the earth. " * 4, encoding="utf-8")
    out = tmp_path / "mem.safetensors"
    rc = main(["compress", str(src), "--out", str(out), "--base", str(gemma_dir),
               "--num-latents", "2", "--max-segment-len", "32", "--segment-len", "16",
               "--seed", "4"])
    assert rc == 0, capsys.readouterr().err
    base, _ = load_base(gemma_dir)
    torch.manual_seed(4)
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(num_latents=2, max_segment_len=32))
    mem = CompressedMemory.load(out, model)
    assert mem.num_segments >= 2 and len(mem) == 2 * mem.num_segments


def test_cli_compress_refuses_unsupported_or_tokenizerless_base(gemma_dir, tmp_path, capsys):
    from lcirc_fast.cli import EXIT_USAGE, main

    src = tmp_path / "text.txt"
    src.write_text("some text", encoding="utf-8")
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (bad / "model.safetensors").write_bytes(b"")
    rc = main(["compress", str(src), "--out", str(tmp_path / "m.safetensors"), "--base", str(bad)])
    err = capsys.readouterr().err.splitlines()
    assert rc == EXIT_USAGE and len(err) == 1
    assert f"--base {bad}: base model type 'gpt2' is not supported" in err[0] and "qwen3" in err[0]
    notok = tmp_path / "notok"
    tiny_base("qwen2").save_pretrained(notok)
    capsys.readouterr()                                   # drop the save's progress bar
    rc = main(["compress", str(src), "--out", str(tmp_path / "m.safetensors"), "--base", str(notok)])
    err = capsys.readouterr().err.splitlines()
    assert rc == EXIT_USAGE and len(err) == 1 and f"--base {notok} has no tokenizer" in err[0]


def test_cache_keyword_follows_the_installed_transformers():
    """transformers releases name the KV-cache keyword `cache` or `past_key_values`."""
    import inspect

    import torch.nn as nn

    base = tiny_base("llama")
    adapter = BASE_ADAPTERS["llama"]
    takes = inspect.signature(base.forward).parameters
    assert adapter.cache_kwarg(base) == ("cache" if "cache" in takes else "past_key_values")

    class OlderForward(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.config, self.model, self.lm_head = inner.config, inner.model, inner.lm_head

        def forward(self, input_ids=None, past_key_values=None, **kwargs):
            return None

    older = OlderForward(base)
    assert adapter.cache_kwarg(older) == "past_key_values"

    class NoCache(OlderForward):
        def forward(self, input_ids=None, **kwargs):
            return None

    with pytest.raises(ConfigError, match=r"takes none of \['cache', 'past_key_values'\]"):
        adapter.cache_kwarg(NoCache(base))
