"""Fixtures of the evaluation tests: a tiny Hugging Face Llama directory with a tokenizer, and a
query-dependent LCIRC directory saved over it."""
import pytest


@pytest.fixture(scope="session")
def tiny_hf_dirs(tmp_path_factory):
    """(base directory, QD-LCIRC directory): random weights, vocab 32000, real tokenizer."""
    from lcirc_testutils import tiny_lcirc, tiny_llama

    from lcirc_fast.assets import llama_sp_tokenizer

    base_dir = tmp_path_factory.mktemp("base")
    base = tiny_llama(vocab=32000, hidden=16, layers=1, heads=2, kv_heads=1, ffn=32)
    base.save_pretrained(base_dir)
    llama_sp_tokenizer().save_pretrained(base_dir)
    lcirc_dir = tmp_path_factory.mktemp("lcirc")
    tiny_lcirc(base, num_latents=2, compressor_layers=1, max_segment_len=256, segment_len=32,
               query_dependent=True, randomize_gates=True).save_pretrained(lcirc_dir)
    return str(base_dir), str(lcirc_dir)


@pytest.fixture
def no_progress_bars():
    """No loading progress bars on stderr, so it holds only the command's own lines."""
    import datasets
    from transformers.utils import logging

    logging.disable_progress_bar()
    datasets.disable_progress_bars()
    yield
    logging.enable_progress_bar()
    datasets.enable_progress_bars()
