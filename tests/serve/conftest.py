"""Fixtures of the serving tests: tiny model directories with a tokenizer, and a real `lcirc
serve` in a subprocess on a free loopback port."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`lcirc serve` in a subprocess on 127.0.0.1; `stop()` ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, dirs, store, model="lcirc", extra=(), env=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "lcirc_fast", "serve", "--base", dirs["base"],
               "--lcirc", dirs[model], "--store", str(store), "--port", str(self.port),
               "--threads", "1", *map(str, extra)]
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false",
                    **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lcirc serve exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("lcirc serve did not start within 120 s")

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(20)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def server(tiny_dirs, tmp_path_factory):
    """A plain LCIRC server with API key 'sk-test' and small limits."""
    srv = Server(tiny_dirs, tmp_path_factory.mktemp("store"),
                 extra=["--max-batch", "8", "--max-body-bytes", "200000", "--max-tokens-limit", "64",
                        "--api-key", "sk-test", "--model-name", "tiny-lcirc"])
    yield srv
    srv.stop()
