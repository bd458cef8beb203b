"""CompressedMemory: streaming, memory cap, save / load, fingerprints."""
import json

import pytest
import torch
from lcirc_testutils import tiny_lcirc, tiny_llama
from memory_testutils import load_refused, rewrite
from safetensors import safe_open
from safetensors.torch import save_file

from lcirc_fast import CompressedMemory
from lcirc_fast.errors import MemoryFileError


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
    model.configure(kv_hoist_max_segments=1)
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
    assert meta["format"] == "lcirc_fast.memory" and meta["version"] == "3"


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
    with pytest.raises(MemoryFileError, match="no memory file at .*none.safetensors"):
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


# ---------------------------------------------------------------------- corrupt memory files

def _saved(model, tmp_path, batch=1, tokens=20):
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (batch, tokens)))
    path = tmp_path / "m.safetensors"
    mem.save(path)
    return path


def test_load_detects_a_flipped_data_byte(model, tmp_path):
    path = _saved(model, tmp_path)
    raw = bytearray(path.read_bytes())
    header = int.from_bytes(raw[:8], "little")
    raw[8 + header + 5] ^= 0x01                 # inside the first tensor's bytes
    path.write_bytes(bytes(raw))
    load_refused(path, model, "checksum", "compress the context again")


def test_load_detects_an_edited_metadata_value(model, tmp_path):
    path = _saved(model, tmp_path, tokens=10)
    raw = path.read_bytes()
    assert raw.count(b'"num_segments":"1"') == 1
    path.write_bytes(raw.replace(b'"num_segments":"1"', b'"num_segments":"2"'))
    load_refused(path, model, "checksum")


def test_load_refuses_a_corrupt_header_or_truncated_file(model, tmp_path):
    path = _saved(model, tmp_path)
    raw = bytearray(path.read_bytes())
    raw[9] = ord("#")                           # the header JSON's first key
    bad = tmp_path / "header.safetensors"
    bad.write_bytes(bytes(raw))
    load_refused(bad, model, "not a safetensors memory file")
    short = tmp_path / "short.safetensors"
    short.write_bytes(path.read_bytes()[:-100])
    load_refused(short, model, "not a safetensors memory file", "truncated")


@pytest.mark.parametrize("name", ["hidden", "state"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_load_refuses_non_finite_memory(model, tmp_path, name, value):
    def poison(t):
        t[name][0, 1, 2] = value

    path = rewrite(_saved(model, tmp_path), tmp_path / "nan.safetensors", tensor_edit=poison)
    load_refused(path, model, f"'{name}' holds NaN or Inf")


def test_save_refuses_non_finite_memory(model, tmp_path):
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 20)))
    mem.slots[0][0, 0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    with pytest.raises(MemoryFileError, match=r"refusing to write .*nan.safetensors.*'hidden' "
                                              r"holds NaN or Inf"):
        mem.save(path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["fingerprint", "num_segments", "uniform", "cap", "num_slots",
                                 "checksum"])
def test_load_names_a_missing_metadata_key(model, tmp_path, key):
    path = rewrite(_saved(model, tmp_path), tmp_path / "k.safetensors",
                    meta_edit=lambda m: m.pop(key))
    load_refused(path, model, f"lacks the metadata key(s) ['{key}']")


@pytest.mark.parametrize("key,value,words", [
    ("uniform", "tru", "metadata 'uniform' is 'tru', expected true or false"),
    ("uniform", "1", "'uniform' is 1, expected true or false"),
    ("cap", "{", "metadata 'cap' is '{', expected null or an int"),
    ("cap", "0", "'cap' is 0, expected null or an int"),
    ("num_segments", "two", "metadata 'num_segments' is 'two', expected an int >= 1"),
    ("num_segments", "0", "'num_segments' is 0, expected an int >= 1"),
    ("num_slots", "9", "'num_slots' is 9, but 8 vectors of 4-latent steps make 2 slots"),
    ("record_steps", "[1.5]", "metadata 'record_steps' is '[1.5]', expected a JSON list"),
])
def test_load_names_a_bad_metadata_value(model, tmp_path, key, value, words):
    def edit(meta):
        meta[key] = value

    path = rewrite(_saved(model, tmp_path), tmp_path / "v.safetensors", meta_edit=edit)
    load_refused(path, model, words)


def test_load_refuses_version_1_files(model, tmp_path):
    def old(meta):
        meta["version"] = "1"
        meta.pop("checksum")

    path = rewrite(_saved(model, tmp_path), tmp_path / "v1.safetensors", meta_edit=old)
    load_refused(path, model, "version 1, which has no checksum", "compress the context again")


@pytest.mark.parametrize("edit,words", [
    (lambda t: t.update(hidden=t["hidden"][..., :32].clone()),
     "'hidden' has shape (1, 8, 32), expected (*, *, 64)"),
    (lambda t: t.update(hidden=t["hidden"][0].clone()),
     "'hidden' has shape (8, 64), expected (*, *, 64)"),
    (lambda t: t.update(hidden=t["hidden"].long()),
     "'hidden' has dtype torch.int64, expected a floating-point dtype"),
    (lambda t: t.update(state=t["state"][:, :3].clone()),
     "'state' has shape (1, 3, 64), expected (1, 4, 64)"),
    (lambda t: t.pop("state"), "'state' is missing"),
    (lambda t: t.update(lengths=t["lengths"].float()),
     "'lengths' has dtype torch.float32, expected torch.int64"),
    (lambda t: t.update(lengths=t["lengths"] - 1), "'lengths' is [7], expected 8 per item"),
    (lambda t: t.update(context_tokens=torch.zeros(2, dtype=torch.long)),
     "'context_tokens' has shape (2,), expected (1)"),
    (lambda t: t.update(hidden=t["hidden"][:, :4].clone(), lengths=t["lengths"] - 4),
     "'hidden' holds 4 vectors per item, but 2 segments of 4 latents"),
    (lambda t: t.pop("context_tokens"), "missing ['context_tokens']"),
    (lambda t: t.update(extra=torch.zeros(1)), "unknown ['extra']"),
    (lambda t: t.update(query_ids=torch.zeros(1, 3, dtype=torch.long)),
     "only one of 'query_ids' / 'query_mask'"),
])
def test_load_names_bad_tensors(model, tmp_path, edit, words):
    path = rewrite(_saved(model, tmp_path), tmp_path / "t.safetensors", tensor_edit=edit)
    load_refused(path, model, words)


def test_load_checks_the_query_tensors(tmp_path):
    model = tiny_lcirc(query_dependent=True)
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 20)),
                             query_ids=torch.randint(0, 256, (1, 3)))
    mem.save(tmp_path / "qd.safetensors")

    def out_of_vocab(t):
        t["query_ids"][0, 0] = 256

    def zero_mask(t):
        t["query_mask"].zero_()

    bad = rewrite(tmp_path / "qd.safetensors", tmp_path / "q1.safetensors",
                   tensor_edit=out_of_vocab)
    load_refused(bad, model, "'query_ids' holds token ids outside the vocabulary [0, 256)")
    bad = rewrite(tmp_path / "qd.safetensors", tmp_path / "q2.safetensors", tensor_edit=zero_mask)
    load_refused(bad, model, "'query_mask' must hold 0/1 with at least one 1 per row")


def test_load_checks_stacked_lengths(model, tmp_path):
    with torch.no_grad():
        mem = model.compress([torch.randint(0, 256, (8,)), torch.randint(0, 256, (20,))])
    mem.save(tmp_path / "s.safetensors")

    def too_long(t):
        t["lengths"][0] = 99

    bad = rewrite(tmp_path / "s.safetensors", tmp_path / "bad.safetensors", tensor_edit=too_long)
    load_refused(bad, model, "'lengths' is [99, 8], expected multiples of 4 latents in [1, 8]")


def test_save_refuses_a_memory_without_a_model(tmp_path):
    model = tiny_lcirc()
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 20)))
    del model
    import gc

    gc.collect()
    assert mem.fingerprint is None
    with pytest.raises(MemoryFileError, match=r"cannot write .*orphan.safetensors: the model that "
                                              r"made this memory no longer exists"):
        mem.save(tmp_path / "orphan.safetensors")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------- state dicts and streaming

def _grads_after_append(model, mem, more, x, policy):
    model.zero_grad()
    mem.append(model, more, bptt=policy)
    model(x, memory=mem).logits.square().mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("via", ["file", "state_dict"])
def test_a_saved_memory_keeps_truncated_streaming(tmp_path, via):
    """Truncated(k) re-runs the last k-1 steps at the next append: a saved memory keeps them."""
    from lcirc_fast import bptt

    model = tiny_lcirc(randomize_gates=True)
    ids, more = torch.randint(0, 256, (2, 24)), torch.randint(0, 256, (2, 8))
    x = torch.randint(0, 256, (2, 6))
    policy = bptt.Truncated(3)
    mem = model.compress(ids, segment_len=8, bptt=policy).detach_()
    if via == "file":
        mem.save(tmp_path / "m.safetensors")
        loaded = CompressedMemory.load(tmp_path / "m.safetensors", model)
    else:
        loaded = CompressedMemory.from_state_dict(mem.state_dict(), model)
    assert [r.step for r in loaded.records] == [1, 2]
    bare = CompressedMemory.from_state_dict({**mem.state_dict(), "records": []}, model)
    ref = _grads_after_append(model, mem, more, x, policy)
    got = _grads_after_append(model, loaded, more, x, policy)
    without = _grads_after_append(model, bare, more, x, policy)
    assert torch.equal(loaded.hidden, mem.hidden) and loaded.num_segments == 4
    assert ref.keys() == got.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-7)
    # the records carry the window: without them the compressor sees one step, not three
    assert not torch.allclose(without["compressor.pos_emb"], ref["compressor.pos_emb"])


def test_version_2_files_are_still_read(model, tmp_path):
    from lcirc_fast.memory import content_checksum

    path = _saved(model, tmp_path)

    def as_v2(meta):
        meta["version"] = "2"
        meta.pop("record_steps")

    old = rewrite(path, tmp_path / "v2.safetensors", meta_edit=as_v2)
    with safe_open(str(old), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert meta["checksum"] == content_checksum(meta, tensors)
    loaded = CompressedMemory.load(old, model)
    assert torch.equal(loaded.hidden, CompressedMemory.load(path, model).hidden)
    assert loaded.records == []


def test_from_state_dict_names_what_is_wrong(model):
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 20)))
    state = mem.state_dict()
    with pytest.raises(MemoryFileError, match=r"my state does not hold a memory state: missing "
                                              r"\['hidden'\]"):
        CompressedMemory.from_state_dict({k: v for k, v in state.items() if k != "hidden"},
                                         model, "my state")
    with pytest.raises(MemoryFileError, match=r"'num_segments' is 0"):
        CompressedMemory.from_state_dict({**state, "num_segments": 0}, model)
    with pytest.raises(MemoryFileError, match="different model"):
        CompressedMemory.from_state_dict(state, tiny_lcirc(seed=5))
    bad = {**state, "records": [{"segment_ids": torch.full((1, 4), 999), "input_state": None,
                                 "step": 0}]}
    with pytest.raises(MemoryFileError, match=r"'record\.0\.segment_ids' must hold at most"):
        CompressedMemory.from_state_dict(bad, model)
    assert torch.equal(CompressedMemory.from_state_dict(state, model).hidden, mem.hidden)


# ---------------------------------------------------------------------- the memory's operations

def test_memory_state_is_changed_only_through_its_operations(model):
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 16)), segment_len=8)
    assert isinstance(mem.slots, tuple) and isinstance(mem.records, list)
    for name in ("slots", "state", "num_segments", "context_tokens", "records"):
        with pytest.raises(AttributeError):
            setattr(mem, name, None)
    mem.records.append("x")                     # a copy: the memory is unchanged
    assert mem.records == []


def test_add_step_and_replace_step_keep_the_caches_coherent(model):
    torch.manual_seed(0)
    x = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 16)), segment_len=8)
        before = model(x, memory=mem).logits              # fills both caches
        out = torch.randn(1, 4, 64)
        mem.add_step(out, 8)
        assert mem.num_segments == 3 and mem.context_tokens.tolist() == [24]
        assert mem.state is out and torch.equal(mem.hidden[:, -4:], out)
        fresh = CompressedMemory(mem.slots, mem.state, 3, mem.context_tokens, owner=model)
        torch.testing.assert_close(model(x, memory=mem).logits, model(x, memory=fresh).logits,
                                   rtol=0, atol=0)
        again = torch.randn(1, 4, 64)
        mem.replace_step(0, again)
        assert torch.equal(mem.hidden[:, :4], again) and mem.state is out
        fresh = CompressedMemory(mem.slots, mem.state, 3, mem.context_tokens, owner=model)
        torch.testing.assert_close(model(x, memory=mem).logits, model(x, memory=fresh).logits,
                                   rtol=0, atol=0)
    assert not torch.equal(model(x, memory=mem).logits, before)


def test_add_step_prunes_to_the_cap_and_cuts_old_graphs():
    model = tiny_lcirc(memory_cap=10)
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 24)), segment_len=8)   # 12 -> 10 vectors
    assert [s.shape[1] for s in mem.slots] == [4, 4, 4] and len(mem) == 10
    leaf = torch.randn(1, 4, 64, requires_grad=True)
    mem.add_step(leaf * 2, 8, graph_window=1)
    assert [s.shape[1] for s in mem.slots] == [4, 4, 4] and len(mem) == 10
    assert [s.requires_grad for s in mem.slots] == [False, False, True]
    mem.add_step(leaf * 3, 8, graph_window=1)
    assert [s.requires_grad for s in mem.slots] == [False, False, True]
    mem.replace_step(0, leaf)                    # step 0 is no longer kept: ignored
    assert not any(s is leaf for s in mem.slots) and mem.num_segments == 5


def test_a_stacked_memory_takes_no_step(model):
    with torch.no_grad():
        mem = model.compress([torch.randint(0, 256, (8,)), torch.randint(0, 256, (20,))])
    with pytest.raises(ValueError, match="cannot append to a stacked memory"):
        mem.add_step(torch.zeros(2, 4, 64), 8)
    assert mem.num_segments == 2 and mem.lengths.tolist() == [4, 8]
