"""Memory files edited on purpose and re-hashed (the checksum then passes): the values and counts
are checked against each other and against the model. Also the memory's own operations and the
errors of save / load for bad arguments."""
import functools
import math

import pytest
import torch
from lcirc_testutils import tiny_lcirc
from memory_testutils import load_refused, rewrite

from lcirc_fast import CompressedMemory
from lcirc_fast.errors import MemoryFileError
from lcirc_fast.memory_file import output_bound

_refused = functools.partial(load_refused, one_line=True)   # one line, naming the file


def _hostile(src, dst, tensor_edit=None, meta_edit=None):
    """A memory file edited on purpose and re-hashed as the format does (the checksum passes)."""
    return rewrite(src, dst, meta_edit=meta_edit, tensor_edit=tensor_edit)

def _compress(model, path, tokens=20, **kw):
    torch.manual_seed(0)
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, tokens)), **kw)
    mem.save(path)
    return mem


def test_hidden_scaled_by_1e30_is_refused(model, tmp_path):
    src = tmp_path / "m.safetensors"
    _compress(model, src)

    def scale(t):
        t["hidden"] *= 1e30
        t["state"] *= 1e30

    bad = _hostile(src, tmp_path / "big.safetensors", scale)
    _refused(bad, model, "'hidden' holds", "beyond the", "final LayerNorm can produce")


def test_hidden_scaled_within_the_bound_but_not_the_state_is_refused(model, tmp_path):
    src = tmp_path / "m.safetensors"
    _compress(model, src)

    def scale(t):
        t["hidden"] *= 1.5

    _refused(_hostile(src, tmp_path / "s.safetensors", scale), model,
             "'state' differs from the newest memory vectors")


def test_uniform_flipped_and_156_vectors_dropped_is_refused(tmp_path):
    model = tiny_lcirc(num_latents=16)
    src = tmp_path / "m.safetensors"
    mem = _compress(model, src, tokens=80, segment_len=8)       # 10 steps x 16 latents
    assert len(mem) == 160

    def drop(t):
        t["hidden"] = t["hidden"][:, 156:].clone()
        t["lengths"] = t["lengths"] - 156

    def flip(meta):
        meta["uniform"] = "false"

    bad = _hostile(src, tmp_path / "a.safetensors", drop, flip)
    _refused(bad, model, "'uniform' is false (a stacked memory), but the memory holds a "
                         "recurrent state")
    # without the state too: 4 vectors are no whole step, and 10 slots are no stacked memory
    bad = _hostile(bad, tmp_path / "b.safetensors", lambda t: t.pop("state"))
    _refused(bad, model, "'lengths' is [4], expected multiples of 16 latents")

    def whole_step(t):
        t["hidden"] = t["hidden"][:, :16].clone()
        t["lengths"] = t["lengths"] - 144

    bad = _hostile(src, tmp_path / "c.safetensors", whole_step, flip)
    bad = _hostile(bad, tmp_path / "c.safetensors", lambda t: t.pop("state"))
    _refused(bad, model, "'num_slots' is 10, expected 0 for a stacked memory")
    # kept uniform, the vector count contradicts the segment count
    bad = _hostile(src, tmp_path / "d.safetensors", drop)
    _refused(bad, model, "'hidden' holds 4 vectors per item, but 10 segments of 16 latents")


@pytest.mark.parametrize("tokens", [10**15, 3, 0])
def test_context_tokens_out_of_reach_of_four_segments_is_refused(model, tmp_path, tokens):
    src = tmp_path / "m.safetensors"
    mem = _compress(model, src, tokens=32, segment_len=8)
    assert mem.num_segments == 4

    def edit(t):
        t["context_tokens"].fill_(tokens)

    _refused(_hostile(src, tmp_path / "t.safetensors", edit), model,
             f"'context_tokens' is {tokens} for item 0", "4 to 4 segments", "4 to 128 tokens")


def test_query_dropped_from_a_qd_memory_is_refused(tmp_path):
    model = tiny_lcirc(query_dependent=True)
    src = tmp_path / "m.safetensors"
    _compress(model, src, query_ids=torch.randint(0, 256, (1, 3)))

    def drop(t):
        t.pop("query_ids")
        t.pop("query_mask")

    _refused(_hostile(src, tmp_path / "q.safetensors", drop), model,
             "'query_ids' is missing: the model is query-dependent")


def test_stacked_memory_lengths_must_be_whole_steps(model, tmp_path):
    with torch.no_grad():
        mem = model.compress([torch.randint(0, 256, (8,)), torch.randint(0, 256, (20,))])
    mem.save(tmp_path / "s.safetensors")
    assert mem.lengths.tolist() == [4, 8]

    def partial(t):
        t["lengths"][0] = 3

    _refused(_hostile(tmp_path / "s.safetensors", tmp_path / "p.safetensors", partial), model,
             "'lengths' is [3, 8], expected multiples of 4 latents")

    def too_many_tokens(t):
        t["context_tokens"][0] = 1000

    _refused(_hostile(tmp_path / "s.safetensors", tmp_path / "c.safetensors", too_many_tokens),
             model, "'context_tokens' is 1000 for item 0", "1 to 32 tokens")


def test_record_input_state_beyond_the_bound_is_refused(tmp_path):
    from lcirc_fast import bptt

    model = tiny_lcirc()
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 24)), segment_len=8, bptt=bptt.Truncated(3))
    mem.save(tmp_path / "r.safetensors")

    def scale(t):
        t["record.0.input_state"] *= 100

    _refused(_hostile(tmp_path / "r.safetensors", tmp_path / "x.safetensors", scale), model,
             "'record.0.input_state' holds", "beyond the")


def test_output_bound_is_what_the_final_layernorm_can_reach():
    """The bound holds for any input and is reached by a one-hot input (eps aside)."""
    torch.manual_seed(0)
    model = tiny_lcirc()
    norm = model.compressor.norm
    with torch.no_grad():
        norm.weight.uniform_(-2, 2)
        norm.bias.uniform_(-1, 1)
    bound = output_bound(model.compressor)
    d = bound.shape[0]
    torch.testing.assert_close(bound, math.sqrt(d - 1) * norm.weight.abs() + norm.bias.abs())
    with torch.no_grad():
        z = torch.randn(256, d) * torch.logspace(-3, 3, 256)[:, None]
        assert bool((norm(z).abs() <= bound * (1 + 1e-5)).all())
        spike = torch.eye(d) * 1e6                            # x = sqrt(d - 1) in one channel
        reach = norm(spike).diagonal().abs()
    torch.testing.assert_close(reach, (math.sqrt(d - 1) * norm.weight + norm.bias).abs(),
                               rtol=1e-4, atol=1e-4)
    same = (norm.weight >= 0) == (norm.bias >= 0)             # there |w x + b| = |w| x + |b|
    assert bool(same.any())
    torch.testing.assert_close(reach[same], bound[same], rtol=1e-4, atol=1e-4)


def test_real_memories_pass_the_value_checks(tmp_path):
    """Long, capped, streamed and bf16 memories all load (the checks reject no real memory)."""
    from lcirc_fast import bptt

    for i, (cfg, kw) in enumerate([({}, dict(tokens=300)),
                                   ({"memory_cap": 10}, dict(tokens=100, segment_len=8)),
                                   ({"dtype": torch.bfloat16}, dict(tokens=64)),
                                   ({}, dict(tokens=40, segment_len=8, bptt=bptt.Truncated(2)))]):
        dtype = cfg.pop("dtype", None)
        model = tiny_lcirc(**cfg)
        if dtype is not None:
            model = model.to(dtype)
        path = tmp_path / f"{i}.safetensors"
        mem = _compress(model, path, **kw)
        with torch.no_grad():
            mem.append(model, torch.randint(0, 256, (1, 8)))
        mem.save(path)
        assert torch.equal(CompressedMemory.load(path, model).hidden, mem.hidden)


# ---------------------------------------------------------------------- save / load arguments

def test_save_to_a_directory_names_it(model, tmp_path):
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 20)))
    with pytest.raises(MemoryFileError) as err:
        mem.save(tmp_path)
    assert str(err.value) == (f"cannot write {tmp_path}: it is a directory; pass a file path "
                              f"such as {tmp_path}/memory.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("parent,what", [("missing", "does not exist"),
                                         ("file.txt", "is not a directory")])
def test_save_into_a_missing_directory_names_it(model, tmp_path, parent, what):
    (tmp_path / "file.txt").write_text("keep")
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 20)))
    target = tmp_path / parent / "m.safetensors"
    with pytest.raises(MemoryFileError) as err:
        mem.save(target)
    msg = str(err.value)
    assert msg.startswith(f"cannot write {target}: {tmp_path / parent} {what}") and ".tmp" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.parametrize("fail", ["serialize", "rename"])
def test_a_failed_write_names_the_path_and_leaves_nothing(model, tmp_path, monkeypatch, fail):
    import safetensors.torch

    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 20)))
    target = tmp_path / "m.safetensors"
    if fail == "serialize":
        def save_file(tensors, filename, metadata=None):
            open(filename, "wb").close()
            raise RuntimeError(f'Error while serializing: I/O error: No space left on device '
                               f'(os error 28) at path "{filename}"')
        monkeypatch.setattr(safetensors.torch, "save_file", save_file)
        reason = "Error while serializing: I/O error: No space left on device (os error 28)"
    else:
        def replace(src, dst):
            raise PermissionError(13, "Permission denied")
        monkeypatch.setattr("os.replace", replace)
        reason = "Permission denied"
    with pytest.raises(MemoryFileError) as err:
        mem.save(target)
    assert str(err.value) == f"cannot write {target}: {reason}; nothing was written"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [None, "model", 3])
def test_load_without_a_model_is_a_type_error(model, tmp_path, bad):
    with torch.no_grad():
        mem = model.compress(torch.randint(0, 256, (1, 20)))
    mem.save(tmp_path / "m.safetensors")
    name = type(bad).__name__
    with pytest.raises(TypeError, match=f"model must be the LCIRCForCausalLM that compressed the "
                                        f"memory .*, got {name}$"):
        CompressedMemory.load(tmp_path / "m.safetensors", bad)
    with pytest.raises(TypeError, match=f"got {name}$"):
        CompressedMemory.from_state_dict(mem.state_dict(), bad)
