"""Llama-2-7B shapes (built on the meta device: no memory, no weights): the paper's sizes."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lcirc_fast import LCIRCConfig, LCIRCForCausalLM


@pytest.mark.parametrize("qd,expected", [(False, 2_533_924_888), (True, 2_691_227_674)])
def test_llama2_7b_parameter_counts_match_paper(qd, expected):
    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      max_position_embeddings=4096)
    with torch.device("meta"):
        base = LlamaForCausalLM(cfg)
        model = LCIRCForCausalLM.from_base(base, LCIRCConfig(query_dependent=qd))
    c = model.config
    assert c.gca_layers == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31]
    assert (c.compressor_heads, c.compressor_head_dim, c.compressor_ffn) == (32, 128, 11008)
    assert c.segment_len == 2048 and c.max_segment_len == 4096
    assert sum(p.numel() for p in model.trainable_parameters()) == expected
    assert sum(p.numel() for p in model.compressor.parameters()) == 646_029_312
    assert sum(p.numel() for p in model.gca["0"].parameters()) == 157_302_786
    assert all(not p.requires_grad for p in model.base.parameters())
