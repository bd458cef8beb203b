"""Builders shared by the tests: tiny random Llama models, LCIRC wrappers, train/ scripts."""
import torch


def tiny_llama(vocab=256, hidden=64, layers=4, heads=4, kv_heads=2, ffn=128, tied=False,
               attn="sdpa", seed=0):
    """A small random LlamaForCausalLM in eval mode (fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads,
                      intermediate_size=ffn, tie_word_embeddings=tied,
                      max_position_embeddings=512)
    return LlamaForCausalLM._from_config(cfg, attn_implementation=attn).eval()


def tiny_lcirc(base=None, seed=0, randomize_gates=False, **cfg):
    """LCIRCForCausalLM over a tiny Llama; small compressor defaults."""
    from lcirc_fast import LCIRCConfig, LCIRCForCausalLM

    base = base if base is not None else tiny_llama()
    defaults = dict(num_latents=4, compressor_layers=2, max_segment_len=32, segment_len=8)
    defaults.update(cfg)
    torch.manual_seed(seed)
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(**defaults))
    if randomize_gates:
        with torch.no_grad():
            blocks = list(model.gca.values()) + ([model.mixer] if model.mixer is not None else [])
            for blk in blocks:
                blk.attn_gate.uniform_(0.3, 1.0)
                blk.ff_gate.uniform_(0.3, 1.0)
    return model


def lcirc_params(model):
    """(name, parameter) pairs a compressed memory depends on: latents, compressor, mixer."""
    ps = [("latents", model.latents)] + [("compressor." + n, p)
                                         for n, p in model.compressor.named_parameters()]
    if model.mixer is not None:
        ps += [("mixer." + n, p) for n, p in model.mixer.named_parameters()]
    return ps
