"""Documents on disk: one checksummed safetensors file per document, written atomically.

An LCIRC document is its memory file (`CompressedMemory.save`). A QD-LCIRC memory depends on the
question, so a QD document is stored as its token ids (format `lcirc_fast.document`, sha256 of
the content in the metadata); the question-free K/V is rebuilt from them. A file is written to a
temporary name, flushed to disk and renamed, so a process killed while writing leaves at most a
temporary file, which is never read; a file that fails its checks is moved aside as `.corrupt`.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading

import torch

from ..errors import MemoryFileError
from ..memory import CompressedMemory, content_checksum

DOC_FORMAT = "lcirc_fast.document"
_ID = re.compile(r"^[0-9a-f]{64}$")


def document_id(text: str, fingerprint: str) -> str:
    """sha256 of the model fingerprint and the UTF-8 text: 64 hex digits."""
    return hashlib.sha256(f"{fingerprint}\n".encode() + text.encode("utf-8")).hexdigest()


def is_document_id(doc_id: str) -> bool:
    return bool(_ID.match(doc_id))


class DocumentStore:
    """`root`/<id>.safetensors for the documents of one model (`fingerprint`)."""

    def __init__(self, root: str, fingerprint: str):
        os.makedirs(root, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(f"--store {root}: cannot write in this directory")
        self.root, self.fingerprint = root, fingerprint
        self._lock = threading.Lock()
        for name in os.listdir(root):          # leftovers of writes that never finished
            if ".tmp-" in name:
                os.remove(os.path.join(root, name))

    def path(self, doc_id: str) -> str:
        return os.path.join(self.root, f"{doc_id}.safetensors")

    def exists(self, doc_id: str) -> bool:
        return is_document_id(doc_id) and os.path.isfile(self.path(doc_id))

    def ids(self) -> list[str]:
        return sorted(n[:-12] for n in os.listdir(self.root)
                      if n.endswith(".safetensors") and is_document_id(n[:-12]))

    def delete(self, doc_id: str) -> bool:
        """Remove a document; False when there was none."""
        if not is_document_id(doc_id):
            return False
        try:
            os.remove(self.path(doc_id))
            return True
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------ LCIRC memories
    def put_memory(self, doc_id: str, memory: CompressedMemory) -> None:
        memory.save(self.path(doc_id))          # temp file + rename
        _sync(self.path(doc_id))

    def get_memory(self, doc_id: str, model) -> CompressedMemory | None:
        """The memory stored under `doc_id`, checked against `model`; None when absent or
        invalid (an invalid file is moved aside)."""
        if not self.exists(doc_id):
            return None
        try:
            return CompressedMemory.load(self.path(doc_id), model)
        except MemoryFileError:
            self._quarantine(doc_id)
            return None

    # ------------------------------------------------------------------ QD documents
    def put_tokens(self, doc_id: str, ids: torch.Tensor) -> None:
        """Write the token ids int64 [1, N] of a QD document."""
        from safetensors.torch import save_file

        tensors = {"ids": ids.detach().to("cpu", torch.long).contiguous()}
        meta = {"format": DOC_FORMAT, "version": "1", "fingerprint": self.fingerprint}
        meta["checksum"] = content_checksum(meta, tensors)
        path = self.path(doc_id)
        tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
        try:
            save_file(tensors, tmp, metadata=meta)
            _sync(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def get_tokens(self, doc_id: str, vocab_size: int) -> torch.Tensor | None:
        """The token ids [1, N] of a QD document; None when absent or invalid (moved aside)."""
        from safetensors import safe_open

        if not self.exists(doc_id):
            return None
        try:
            with safe_open(self.path(doc_id), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            ids = tensors.get("ids")
            ok = (meta.get("format") == DOC_FORMAT and meta.get("fingerprint") == self.fingerprint
                  and set(tensors) == {"ids"} and ids.dtype == torch.long and ids.dim() == 2
                  and ids.shape[0] == 1 and ids.shape[1] >= 1
                  and meta.get("checksum") == content_checksum(meta, tensors)
                  and 0 <= int(ids.min()) and int(ids.max()) < vocab_size)
        except Exception:  # noqa: BLE001 - safetensors raises its own error types
            ok = False
        if not ok:
            self._quarantine(doc_id)
            return None
        return ids

    def _quarantine(self, doc_id: str) -> None:
        with self._lock:
            try:
                os.replace(self.path(doc_id), self.path(doc_id) + ".corrupt")
            except FileNotFoundError:
                pass


def _sync(path: str) -> None:
    """Flush a written file to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
