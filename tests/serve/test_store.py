"""Stored documents: served again after a restart, never served when a write was cut short
(kill -9) or a file was damaged."""
import os
import signal
import subprocess
import sys
import time

import httpx
import torch
from serve_testutils import ROOT, Server

from lcirc_fast.serving.lru import ByteLRU
from lcirc_fast.serving.store import DocumentStore

KEY = {"Authorization": "Bearer k"}


def load_model(dirs, name="lcirc"):
    from lcirc_fast import LCIRCForCausalLM
    from lcirc_fast.models import load_base

    base, _ = load_base(dirs["base"])
    return LCIRCForCausalLM.from_pretrained(dirs[name], base=base).eval()


def test_restarted_server_serves_stored_documents(tiny_dirs, tmp_path):
    body = {"prompt": "Who kept the ledger?", "max_tokens": 5, "temperature": 0}
    srv = Server(tiny_dirs, tmp_path, extra=["--api-key", "k"])
    try:
        doc = httpx.post(srv.url + "/v1/documents", headers=KEY, timeout=60,
                         json={"text": "The keeper kept a ledger of ships. " * 8}).json()
        first = httpx.post(srv.url + "/v1/completions", headers=KEY, timeout=60,
                           json={**body, "document": doc["id"]}).json()
    finally:
        srv.stop()
    assert os.path.isfile(tmp_path / f"{doc['id']}.safetensors")
    srv = Server(tiny_dirs, tmp_path, env={"LCIRC_API_KEY": "k"})       # the key from the env
    try:
        meta = httpx.get(f"{srv.url}/v1/documents/{doc['id']}", headers=KEY).json()
        again = httpx.post(srv.url + "/v1/completions", headers=KEY, timeout=60,
                           json={**body, "document": doc["id"]}).json()
        assert httpx.get(srv.url + "/v1/models").status_code == 401
    finally:
        srv.stop()
    assert meta["tokens"] == doc["tokens"] and meta["segments"] == doc["segments"]
    assert again["choices"][0]["text"] == first["choices"][0]["text"]


WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from lcirc_fast import LCIRCForCausalLM
from lcirc_fast.models import load_base
from lcirc_fast.serving.store import DocumentStore, document_id
base, tok = load_base({base!r})
model = LCIRCForCausalLM.from_pretrained({lcirc!r}, base=base).eval()
store = DocumentStore({store!r}, model.fingerprint())
i = 0
while True:
    text = f"document number {{i}} " * 40
    ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
    with torch.no_grad():
        mem = model.compress(ids)
    store.put_memory(document_id(text, model.fingerprint()), mem)
    print("stored", flush=True)
    i += 1
"""


def test_kill_9_while_storing_leaves_nothing_invalid(tiny_dirs, tmp_path):
    script = WRITER.format(root=str(ROOT), base=tiny_dirs["base"], lcirc=tiny_dirs["lcirc"],
                           store=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            assert proc.stdout.readline().startswith("stored")
        time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(20)
        proc.stdout.close()
    model = load_model(tiny_dirs)
    store = DocumentStore(str(tmp_path), model.fingerprint())
    ids = store.ids()
    assert len(ids) >= 3
    assert all(store.get_memory(i, model) is not None for i in ids)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]      # leftovers removed


def test_damaged_files_are_not_served(tiny_dirs, tmp_path):
    model = load_model(tiny_dirs)
    store = DocumentStore(str(tmp_path), model.fingerprint())
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 32000, (1, 40)))
    good, cut, junk = "a" * 64, "b" * 64, "c" * 64
    store.put_memory(good, mem)
    data = open(store.path(good), "rb").read()
    open(store.path(cut), "wb").write(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    open(store.path(junk), "wb").write(bytes(flipped))
    assert store.get_memory(good, model) is not None
    assert store.get_memory(cut, model) is None and store.get_memory(junk, model) is None
    assert store.ids() == [good]                                   # moved aside as .corrupt
    ids = torch.randint(0, 32000, (1, 30))
    qd = load_model(tiny_dirs, "qd")
    qstore = DocumentStore(str(tmp_path / "qd"), qd.fingerprint())
    qstore.put_tokens(good, ids)
    assert torch.equal(qstore.get_tokens(good, 32000), ids)
    raw = bytearray(open(qstore.path(good), "rb").read())
    raw[-3] ^= 0x01
    open(qstore.path(good), "wb").write(bytes(raw))
    assert qstore.get_tokens(good, 32000) is None


def test_byte_lru_evicts_least_recent():
    c = ByteLRU(100)
    c.put("a", 1, 40)
    c.put("b", 2, 40)
    assert c.get("a") == 1                     # a is now the most recent
    c.put("c", 3, 40)                          # over 100: b goes
    assert "b" not in c and c.get("a") == 1 and c.get("c") == 3
    c.put("big", 4, 101)                       # larger than the cache: not kept
    assert "big" not in c and c.nbytes == 80
    assert (c.hits, c.misses) == (3, 0)
    assert c.get("b") is None and c.misses == 1
