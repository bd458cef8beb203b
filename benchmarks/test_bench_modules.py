"""Modules and end-to-end pieces on the cpu-small preset (window 512, segments 256, K=8)."""
import torch


def test_compressor_segment(benchmark, small_model):
    comp, d = small_model.compressor, small_model.config.hidden_size
    state, emb = torch.randn(1, 8, d), torch.randn(1, 256, d)
    with torch.no_grad():
        out = benchmark(comp, state, emb)
    assert out.shape == (1, 8, d)


def test_gca_block_prefill(benchmark, small_model):
    blk, d = next(iter(small_model.gca.values())), small_model.config.hidden_size
    x, mem = torch.randn(1, 512, d), torch.randn(1, 64, d)
    with torch.no_grad():
        k, v = blk.project_memory(mem)
        out = benchmark(blk, x, k, v)
    assert out.shape == x.shape


def test_compress_2k_tokens(benchmark, small_model):
    ids = torch.randint(0, 8192, (1, 2048))
    with torch.no_grad():
        mem = benchmark(small_model.compress, ids)
    assert len(mem) == 8 * 8


def test_lcirc_window_forward(benchmark, small_model):
    with torch.no_grad():
        mem = small_model.compress(torch.randint(0, 8192, (1, 2048)))
        win = torch.randint(0, 8192, (1, 512))
        out = benchmark(lambda: small_model(win, memory=mem, logits_to_keep=1).logits)
    assert out.shape == (1, 1, 8192)


def test_full_attention_forward_2560(benchmark, small_model):
    ids = torch.randint(0, 8192, (1, 2560))
    with torch.no_grad():
        out = benchmark(lambda: small_model.base(input_ids=ids, logits_to_keep=1).logits)
    assert out.shape == (1, 1, 8192)
