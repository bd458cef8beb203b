"""The engine's one torch thread: compression and stored-document reads run there, at its own
thread count; the decoding products go through `FewRowLinear` unless told otherwise."""
import threading
import time

import pytest
import torch

from lcirc_fast.models.decode_linears import decode_linears
from lcirc_fast.modules.linear import FewRowLinear
from lcirc_fast.serving import Engine, EngineSettings

TEXT = "The ferry leaves the north quay at seven and returns from the island at noon. " * 4


@pytest.mark.parametrize("flag", [True, False])
def test_few_row_setting(load_tiny, tmp_path, flag):
    model, tok = load_tiny("lcirc")
    layers = decode_linears(model)
    engine = Engine(model, tok, str(tmp_path), EngineSettings(few_row_linears=flag))
    try:
        assert layers and all((type(m) is FewRowLinear) is flag for m in layers)
    finally:
        engine.close()


@pytest.mark.parametrize("kind", ["lcirc", "qd"])
def test_torch_work_runs_on_the_engine_thread(load_tiny, tmp_path, kind):
    model, tok = load_tiny(kind)
    threads = 1 if torch.get_num_threads() > 1 else 2           # differs from the caller's
    engine = Engine(model, tok, str(tmp_path), EngineSettings(threads=threads))
    seen = []
    real_kv, real_mem = model.compressor.segments_kv, model.memory_kv
    model.compressor.segments_kv = lambda *a, **k: seen.append(threading.current_thread()) \
        or real_kv(*a, **k)
    model.memory_kv = lambda *a, **k: seen.append(threading.current_thread()) or real_mem(*a, **k)
    try:
        worker = engine.call(threading.current_thread)
        assert worker is not threading.current_thread() and worker.name == "lcirc-batcher"
        assert engine.call(torch.get_num_threads) == threads
        info, created = engine.add_document(TEXT)
        assert created and seen and set(seen) == {worker}
        seen.clear()
        engine.cache.pop(info["id"])
        engine._info.clear()
        assert engine.document_info(info["id"])["tokens"] == info["tokens"]   # read from store
        assert seen and set(seen) == {worker}
        with pytest.raises(ZeroDivisionError):
            engine.call(lambda: 1 / 0)                   # the caller gets the exception
        assert engine.call(lambda: 41 + 1) == 42         # and the thread goes on
    finally:
        del model.compressor.segments_kv, model.memory_kv       # the class's methods again
        engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.call(lambda: 0)


def test_close_fails_queued_calls(load_tiny, tmp_path):
    model, tok = load_tiny("lcirc")
    engine = Engine(model, tok, str(tmp_path))
    started, results = threading.Event(), {}

    def slow():
        started.set()
        time.sleep(0.5)
        return "slow"

    def run(name, fn):
        try:
            results[name] = engine.call(fn)
        except RuntimeError as e:
            results[name] = str(e)

    first = threading.Thread(target=run, args=("first", slow))
    first.start()
    started.wait(10)
    second = threading.Thread(target=run, args=("second", lambda: "ran"))
    second.start()
    time.sleep(0.1)                              # queued behind the running call
    engine.close()
    first.join(10)
    second.join(10)
    assert results == {"first": "slow", "second": "the engine is closed"}
