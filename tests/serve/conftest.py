"""Fixtures of the serving tests: tiny model directories with a tokenizer, and a real `lcirc
serve` in a subprocess on a free loopback port."""
import pytest
from serve_testutils import Server


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """{"base", "lcirc", "qd"}: a tiny random Llama with a real tokenizer (vocab 32000) and an
    LCIRC and a QD-LCIRC model saved over it (gates open, so the memory changes answers)."""
    from lcirc_testutils import tiny_lcirc, tiny_llama

    from lcirc_fast.assets import llama_sp_tokenizer

    base_dir = tmp_path_factory.mktemp("base")
    base = tiny_llama(vocab=32000, hidden=32, layers=2, heads=2, kv_heads=1, ffn=64)
    base.save_pretrained(base_dir)
    llama_sp_tokenizer().save_pretrained(base_dir)
    dirs = {"base": str(base_dir)}
    for name, qd in (("lcirc", False), ("qd", True)):
        d = tmp_path_factory.mktemp(name)
        tiny_lcirc(base, num_latents=4, compressor_layers=1, max_segment_len=64, segment_len=16,
                   query_dependent=qd, randomize_gates=True, seed=3).save_pretrained(d)
        dirs[name] = str(d)
    return dirs


@pytest.fixture(scope="session")
def load_tiny(tiny_dirs):
    """load_tiny(kind) -> (model in eval mode, tokenizer) for kind "lcirc" or "qd"."""
    def load(kind: str):
        from lcirc_fast import LCIRCForCausalLM
        from lcirc_fast.models import load_base

        base, tok = load_base(tiny_dirs["base"])
        return LCIRCForCausalLM.from_pretrained(tiny_dirs[kind], base=base).eval(), tok
    return load


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    """A plain LCIRC server with API key 'sk-test' and small limits."""
    srv = Server(tiny_dirs, tmp_path_factory.mktemp("store"),
                 extra=["--max-batch", "8", "--max-body-bytes", "200000", "--max-tokens-limit", "64",
                        "--api-key", "sk-test", "--model-name", "tiny-lcirc"])
    yield srv
    srv.stop()
