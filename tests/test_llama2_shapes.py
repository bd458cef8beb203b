"""Llama-2-7B shapes (built on the meta device: no memory, no weights): the paper's sizes.

Runs in a child process with a 6 GiB address-space limit so that a regression which
materialises the 7B weights fails this test instead of exhausting the machine's memory.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from lcirc_fast import LCIRCConfig, LCIRCForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      max_position_embeddings=4096)
    with torch.device("meta"):
        base = LlamaForCausalLM(cfg)
    assert base.model.embed_tokens.weight.is_meta
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(query_dependent=sys.argv[1] == "qd"))
    assert model.latents.is_meta
    c = model.config
    print(json.dumps({
        "gca_layers": c.gca_layers,
        "compressor": [c.compressor_heads, c.compressor_head_dim, c.compressor_ffn],
        "segment_len": c.segment_len, "max_segment_len": c.max_segment_len,
        "trainable": sum(p.numel() for p in model.trainable_parameters()),
        "compressor_params": sum(p.numel() for p in model.compressor.parameters()),
        "gca_block_params": sum(p.numel() for p in model.gca["0"].parameters()),
        "base_frozen": all(not p.requires_grad for p in model.base.parameters()),
    }))
""")


@pytest.mark.parametrize("qd,expected", [(False, 2_533_924_888), (True, 2_691_227_674)])
def test_llama2_7b_parameter_counts_match_paper(qd, expected):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", CHILD, "qd" if qd else "plain"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["gca_layers"] == [0, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 31]
    assert got["compressor"] == [32, 128, 11008]
    assert got["segment_len"] == 2048 and got["max_segment_len"] == 4096
    assert got["trainable"] == expected
    assert got["compressor_params"] == 646_029_312
    assert got["gca_block_params"] == 157_302_786
    assert got["base_frozen"]
