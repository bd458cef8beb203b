"""The linear read-out of pass keys from the memory (tools/passkey_readout.py)."""
import pytest
import torch
from passkey_readout import parse_args, passkey_memories, ridge_readout


def _digits(n, g):
    return torch.randint(0, 10, (n, 5), generator=g)


def test_ridge_reads_what_the_features_hold():
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(50, 40, generator=g)

    def ordered(y):      # every position's digit, linearly mixed, plus noise
        onehot = torch.nn.functional.one_hot(y, 10).float().reshape(len(y), 50)
        return onehot @ proj + 0.1 * torch.randn(len(y), 40, generator=g)

    ytr, yte = _digits(400, g), _digits(200, g)
    full = ridge_readout(ordered(ytr), ytr, ordered(yte), yte, lam=1.0)
    assert min(full["by_pos"]) > 0.9 and full["bag"] > 0.9
    noise = ridge_readout(torch.randn(400, 40, generator=g), ytr, torch.randn(200, 40, generator=g), yte, 1.0)
    assert max(noise["by_pos"]) < 0.3 and noise["bag"] <= noise["bag_majority"] + 0.05

    bag_proj = torch.randn(10, 40, generator=g)

    def bag(y):          # which digits occur, not where: positions at the bag level only
        return torch.zeros(len(y), 10).scatter_(1, y, 1.0) @ bag_proj

    b = ridge_readout(bag(ytr), ytr, bag(yte), yte, lam=1.0)
    assert b["bag"] > 0.95 and max(b["by_pos"]) < 0.5
    with pytest.raises(ValueError):
        ridge_readout(torch.randn(3, 4), ytr[:2], torch.randn(1, 4), yte[:1], 1.0)


def test_passkey_memories_on_a_tiny_model():
    from transformers import AutoTokenizer

    from lcirc_fast.assets import smollm2_cache_dir
    from lcirc_fast.config import LCIRCConfig
    from lcirc_fast.models import LCIRCForCausalLM, load_base

    tok = AutoTokenizer.from_pretrained(smollm2_cache_dir(), local_files_only=True)
    base, _ = load_base("tiny_random", torch.float32, device=torch.device("cpu"),
                        tiny={"vocab_size": tok.vocab_size, "hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1},
                        seed=0)
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(num_latents=4, compressor_layers=1,
                                                          max_segment_len=64, segment_len=16))
    text = " ".join(f"verse {i} and the word of the book" for i in range(300))
    docs = [("a", torch.tensor(tok(text).input_ids))]
    x, y = passkey_memories(model, tok, docs, n=3, hay=40, window=32, segment_len=16, seed=1)
    assert x.shape[0] == 3 and y.shape == (3, 5) and 0 <= int(y.min()) and int(y.max()) <= 9
    assert not torch.equal(x[0], x[1])
    with pytest.raises(SystemExit):
        parse_args(["--config", "x.yaml", "--train", "1"])
