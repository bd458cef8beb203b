"""CompressedMemory: streaming, memory cap, save / load, fingerprints."""
import json

import pytest
import torch
from lcirc_testutils import tiny_lcirc, tiny_llama
from safetensors import safe_open
from safetensors.torch import save_file

from lcirc_fast import CompressedMemory


def test_streaming_equals_one_shot(model):
    ids = torch.randint(0, 256, (2, 37))
    bounds = [0, 8, 16, 24, 32, 37]
    with torch.no_grad():
        whole = model.compress(ids, boundaries=bounds)
        mem = model.compress(ids[:, :8], boundaries=[0, 8])
        for lo, hi in zip(bounds[1:-1], bounds[2:]):
            mem.append(model, ids[:, lo:hi])
    assert mem.num_segments == whole.num_segments == 5
    # one-shot compression batches the K/V products of graph-free steps, so matrix-product
    # blocking may differ in the last bits
    torch.testing.assert_close(mem.hidden, whole.hidden, rtol=1e-5, atol=1e-6)
    model.kv_hoist_max_segments = 1
    with torch.no_grad():
        assert torch.equal(model.compress(ids, boundaries=bounds).hidden, mem.hidden)
    assert mem.context_tokens.tolist() == [37, 37]


def test_streaming_equals_one_shot_qd():
    model = tiny_lcirc(query_dependent=True, randomize_gates=True)
    ids = torch.randint(0, 256, (1, 24))
    q = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        whole = model.compress(ids, segment_len=8, query_ids=q)
        mem = model.compress(ids[:, :8], segment_len=8, query_ids=q)
        mem.append(model, ids[:, 8:16]).append(model, ids[:, 16:])
    torch.testing.assert_close(mem.hidden, whole.hidden, rtol=1e-5, atol=1e-6)


def test_memory_cap_keeps_newest_vectors():
    model = tiny_lcirc(memory_cap=10)              # 4 latents per step: 2.5 slots
    ids = torch.randint(0, 256, (1, 40))
    with torch.no_grad():
        capped = model.compress(ids, segment_len=8)
        model.config.memory_cap = None
        full = model.compress(ids, segment_len=8)
    assert len(capped) == 10 and len(full) == 20
    assert torch.equal(capped.hidden, full.hidden[:, -10:])
    assert len(capped.slots) == 3


def test_save_load_roundtrip_identical_logits(model, tmp_path):
    ids = torch.randint(0, 256, (2, 30))
    x = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        mem = model.compress(ids)
        ref = model(x, memory=mem).logits
    path = tmp_path / "m.safetensors"
    mem.save(path)
    loaded = CompressedMemory.load(path, model)
    assert loaded.num_segments == mem.num_segments and len(loaded) == len(mem)
    with torch.no_grad():
        assert torch.equal(model(x, memory=loaded).logits, ref)
        # a loaded memory can keep streaming
        more = torch.randint(0, 256, (2, 8))
        loaded.append(model, more)
        mem.append(model, more)
    assert torch.equal(loaded.hidden, mem.hidden)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "lcirc_fast.memory" and meta["version"] == "1"


def test_save_load_stacked_and_qd(tmp_path):
    model = tiny_lcirc(query_dependent=True, randomize_gates=True)
    ctx = [torch.randint(0, 256, (12,)), torch.randint(0, 256, (30,))]
    qs = [torch.randint(0, 256, (3,)), torch.randint(0, 256, (5,))]
    with torch.no_grad():
        mem = model.compress(ctx, query_ids=qs)
        x = torch.randint(0, 256, (2, 5))
        ref = model(x, memory=mem).logits
        mem.save(tmp_path / "s.safetensors")
        loaded = CompressedMemory.load(tmp_path / "s.safetensors", model)
        assert torch.equal(model(x, memory=loaded).logits, ref)
    assert loaded.lengths.tolist() == mem.lengths.tolist()
    assert torch.equal(loaded.query_ids, mem.query_ids)


def test_load_refuses_other_model(model, tmp_path):
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 20)))
    mem.save(tmp_path / "m.safetensors")
    other_weights = tiny_lcirc(seed=1)
    with pytest.raises(ValueError, match="different model"):
        CompressedMemory.load(tmp_path / "m.safetensors", other_weights)
    other_config = tiny_lcirc(compressor_layers=1)
    with pytest.raises(ValueError, match="different model"):
        CompressedMemory.load(tmp_path / "m.safetensors", other_config)
    other_base = tiny_lcirc(tiny_llama(seed=9))
    other_base.load_state_dict(model.lcirc_state_dict(), strict=False)
    with pytest.raises(ValueError, match="different model"):
        CompressedMemory.load(tmp_path / "m.safetensors", other_base)


def test_load_refuses_bad_files(model, tmp_path):
    with pytest.raises(FileNotFoundError):
        CompressedMemory.load(tmp_path / "none.safetensors", model)
    (tmp_path / "junk").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors"):
        CompressedMemory.load(tmp_path / "junk", model)
    save_file({"hidden": torch.zeros(1, 4, 64)}, str(tmp_path / "foreign.safetensors"),
              metadata={"format": "something"})
    with pytest.raises(ValueError, match="not an lcirc_fast memory"):
        CompressedMemory.load(tmp_path / "foreign.safetensors", model)
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 20)))
    mem.save(tmp_path / "m.safetensors")
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta["version"] = "99"
    save_file(tensors, str(tmp_path / "v99.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="version"):
        CompressedMemory.load(tmp_path / "v99.safetensors", model)


def test_fingerprint_tracks_weight_updates(model, tmp_path):
    fp = model.fingerprint()
    assert model.fingerprint() == fp
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 20)))
    mem.save(tmp_path / "before.safetensors")
    saved_segments = mem.num_segments
    twin = tiny_lcirc(seed=0, randomize_gates=True)        # same weights, another object
    with torch.no_grad():
        model.compressor.norm.bias.add_(0.1)               # an optimizer step, say
    assert model.fingerprint() != fp
    # the model that made a memory keeps accepting it (training streams across updates) ...
    with torch.no_grad():
        model(torch.randint(0, 256, (1, 4)), memory=mem)
        mem.append(model, torch.randint(0, 256, (1, 8)))
    # ... other objects check the fingerprint, and files are refused once the weights differ
    with pytest.raises(ValueError, match="different model"):
        twin(torch.randint(0, 256, (1, 4)), memory=mem)
    with pytest.raises(ValueError, match="different model"):
        CompressedMemory.load(tmp_path / "before.safetensors", model)
    assert CompressedMemory.load(tmp_path / "before.safetensors", twin).num_segments == saved_segments
    with torch.no_grad():
        model.gca["0"].attn.to_q.weight.add_(0.1)       # GCA weights do not change the memory
    assert model.fingerprint() == model.fingerprint()


def test_append_errors(model):
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (2, 20)))
        stacked = model.compress([torch.randint(0, 256, (8,)), torch.randint(0, 256, (20,))])
    with pytest.raises(ValueError, match="batch size"):
        mem.append(model, torch.randint(0, 256, (3, 8)))
    with pytest.raises(ValueError, match="position table"):
        mem.append(model, torch.randint(0, 256, (2, 33)))
    with pytest.raises(ValueError, match="stacked"):
        stacked.append(model, torch.randint(0, 256, (2, 8)))


def test_summary_fields(model):
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 50)))
    assert "segments=" in repr(mem) and mem.num_segments == len(mem) // 4
    assert json.loads(json.dumps(mem.context_tokens.tolist())) == [50]


@pytest.mark.parametrize("batch", [1, 2])
def test_save_load_one_segment_memory(model, tmp_path, batch):
    """Default segmenting of a short text gives one segment, whose slot is also the state."""
    ids = torch.randint(0, 256, (batch, 10))
    with torch.no_grad():
        mem = model.compress(ids)
    assert mem.num_segments == 1 and mem.state is mem.slots[0]
    path = tmp_path / "one.safetensors"
    mem.save(path)
    loaded = CompressedMemory.load(path, model)
    assert torch.equal(loaded.hidden, mem.hidden) and torch.equal(loaded.state, mem.state)
    assert loaded.num_segments == 1 and loaded.context_tokens.tolist() == [10] * batch
    more = torch.randint(0, 256, (batch, 8))
    with torch.no_grad():
        loaded.append(model, more)
        mem.append(model, more)
    assert loaded.num_segments == 2 and torch.equal(loaded.hidden, mem.hidden)


def test_save_load_one_segment_stacked(model, tmp_path):
    with torch.no_grad():
        mem = model.compress([torch.randint(0, 256, (6,)), torch.randint(0, 256, (10,))])
    mem.save(tmp_path / "stacked.safetensors")
    loaded = CompressedMemory.load(tmp_path / "stacked.safetensors", model)
    assert torch.equal(loaded.hidden, mem.hidden)
    assert loaded.lengths.tolist() == mem.lengths.tolist() == [4, 4]
    with pytest.raises(ValueError, match="stacked"):
        loaded.append(model, torch.randint(0, 256, (2, 8)))


def test_save_load_capped_to_one_slot(tmp_path):
    model = tiny_lcirc(memory_cap=4)
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 24)), segment_len=8)
    assert len(mem.slots) == 1 and mem.state is mem.slots[0]
    mem.save(tmp_path / "cap.safetensors")
    loaded = CompressedMemory.load(tmp_path / "cap.safetensors", model)
    assert torch.equal(loaded.hidden, mem.hidden) and loaded.num_segments == 3
