"""Helpers of the memory-file tests: rewrite a saved memory file, and expect its load refused."""
import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from lcirc_fast import CompressedMemory
from lcirc_fast.errors import MemoryFileError
from lcirc_fast.memory_file import content_checksum


def rewrite(src, dst, meta_edit=None, tensor_edit=None, fix_checksum=True):
    """Copy a memory file through `meta_edit(meta)` / `tensor_edit(tensors)` (each edits in
    place) and, with `fix_checksum`, re-hash it as the format does, so the checksum passes."""
    with safe_open(str(src), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    if meta_edit:
        meta_edit(meta)
    if tensor_edit:
        tensor_edit(tensors)
    if fix_checksum and "checksum" in meta:
        meta["checksum"] = content_checksum(meta, tensors)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def load_refused(path, model, *words, one_line=False):
    """`CompressedMemory.load(path, model)` raises MemoryFileError naming `path` and `words`."""
    with pytest.raises(MemoryFileError) as err:
        CompressedMemory.load(path, model)
    msg = str(err.value)
    assert str(path) in msg, msg
    assert not one_line or "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
