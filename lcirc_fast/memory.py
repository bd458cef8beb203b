"""CompressedMemory: the concatenated compressor outputs of one or more documents.

It holds the per-step slots h(1..S) (each [B, K, d]), the recurrent state for streaming more
segments, the QD query (if any), and a cache of each GCA layer's projected keys/values so that
decoding projects the memory once.
"""
from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover
    from .models.lcirc_llama import LCIRCForCausalLM

FORMAT = "lcirc_fast.memory"
FORMAT_VERSION = "1"


def _own_copy(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU copy that shares storage with no other tensor.

    safetensors refuses tensors that share memory, and a one-segment memory's `hidden` is its
    `state`.
    """
    return t.detach().to("cpu", copy=True).contiguous()


@dataclass
class _Record:
    """What streaming Truncated(k) needs to re-run a recent step with a graph."""
    segment_ids: torch.Tensor      # [B, L]
    input_state: torch.Tensor      # [B, K, d], detached (or h0 itself for step 0)
    step: int


class CompressedMemory:
    """Compressed memory of a batch of documents.

    Attributes:
        slots: list of [B, K, d] tensors, oldest first (only those kept under the memory cap).
        state: [B, K, d] the last compressor output (input of the next step), or None.
        num_segments: recurrence steps taken so far.
        context_tokens: int64 [B], tokens compressed per item.
        query_ids / query_mask: [B, Tq] QD query (None for plain LCIRC).
        lengths: int64 [B] valid memory vectors per item (items of a stacked batch may differ).
        fingerprint: the fingerprint (`LCIRCForCausalLM.fingerprint`) of the model that made
            it, computed when first needed (saving, or use with another model object).

    A memory is always accepted by the model object that made it, also after that model's
    weights were updated (training streams memories across optimizer steps); any other model
    must have the same fingerprint.
    """

    def __init__(self, slots, state, num_segments, context_tokens, fingerprint=None, cap=None,
                 query_ids=None, query_mask=None, lengths=None, hidden=None, owner=None):
        self.slots = list(slots)
        self.state = state
        self.num_segments = int(num_segments)
        self.context_tokens = context_tokens
        self._fingerprint = fingerprint
        self._owner = None if owner is None else weakref.ref(owner)
        self.owner_uid = None if owner is None else owner.uid
        self.cap = cap
        self.query_ids = query_ids
        self.query_mask = query_mask
        self._lengths = lengths
        self._hidden = hidden          # set for stacked (padded) memories
        self._kv_cache: dict = {}
        self._concat: tuple | None = None   # (slot ids, cap) -> concatenated hidden
        self._records: list[_Record] = []
        self.selected_steps: list[int] | None = None

    # ------------------------------------------------------------------ provenance
    @property
    def fingerprint(self) -> str | None:
        if self._fingerprint is None and self._owner is not None:
            owner = self._owner()
            if owner is not None:
                return owner.fingerprint()
        return self._fingerprint

    @fingerprint.setter
    def fingerprint(self, value: str | None) -> None:
        self._fingerprint = value

    # ------------------------------------------------------------------ views
    @property
    def hidden(self) -> torch.Tensor:
        """[B, M, d]: the memory the GCA blocks read (capped to the newest `cap` vectors)."""
        if self._hidden is not None:
            return self._hidden
        key = (tuple(id(s) for s in self.slots), self.cap)
        if self._concat is not None and self._concat[0] == key:
            return self._concat[1]
        h = self.slots[0] if len(self.slots) == 1 else torch.cat(self.slots, dim=1)
        if self.cap is not None and h.shape[1] > self.cap:
            h = h[:, -self.cap:]
        self._concat = (key, h)
        return h

    def _first(self) -> torch.Tensor:
        return self._hidden if self._hidden is not None else self.slots[0]

    @property
    def batch_size(self) -> int:
        return self._first().shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        if self._lengths is not None:
            return self._lengths
        h = self.hidden
        return torch.full((h.shape[0],), h.shape[1], dtype=torch.long, device=h.device)

    @property
    def uniform(self) -> bool:
        """True when every item has the same memory length (no padding)."""
        return self._hidden is None

    def __len__(self) -> int:
        """Memory vectors (memory tokens) per item; the padded length for stacked batches."""
        return self.hidden.shape[1]

    @property
    def device(self) -> torch.device:
        return self._first().device

    @property
    def dtype(self) -> torch.dtype:
        return self._first().dtype

    def __repr__(self) -> str:
        return (f"CompressedMemory(batch={self.batch_size}, vectors={len(self)}, "
                f"segments={self.num_segments}, context_tokens={self.context_tokens.tolist()}, "
                f"query_dependent={self.query_ids is not None})")

    # ------------------------------------------------------------------ streaming
    def append(self, model: "LCIRCForCausalLM", segment_ids: torch.Tensor,
               bptt=None) -> "CompressedMemory":
        """Compress one more segment ([B, L] or [L] token ids) into this memory, in place.

        Streaming a document segment by segment gives the same memory as compressing it at
        once with the same boundaries. `bptt` as in `LCIRCForCausalLM.compress`; Selective
        needs explicit `steps` (global step indices) when streaming.
        """
        model._append(self, segment_ids, bptt)
        return self

    def invalidate_cache(self) -> None:
        """Drop the cached concatenation and GCA keys/values (after editing tensors in place)."""
        self._kv_cache.clear()
        self._concat = None

    # ------------------------------------------------------------------ batching
    @staticmethod
    def stack(memories: list["CompressedMemory"]) -> "CompressedMemory":
        """Batch memories of different lengths (right-padded; `lengths` masks the padding).

        The result can be read by the model but not appended to.
        """
        if not memories:
            raise ValueError("stack needs at least one memory")
        owners = {m.owner_uid for m in memories}
        if (len(owners) != 1 or None in owners) and len({m.fingerprint for m in memories}) != 1:
            raise ValueError("cannot stack memories made by different models")
        d = memories[0].hidden.shape[-1]
        longest = max(len(m) for m in memories)
        rows, lengths = [], []
        for m in memories:
            for b in range(m.batch_size):
                n = int(m.lengths[b])
                row = m.hidden[b, :n]
                rows.append(torch.cat([row, row.new_zeros(longest - n, d)], 0))
                lengths.append(n)
        hidden = torch.stack(rows)
        ctx = torch.cat([m.context_tokens for m in memories])
        qd = [m.query_ids is not None for m in memories]
        if any(qd) and not all(qd):
            raise ValueError("cannot stack query-dependent and plain memories")
        qids = qmask = None
        if all(qd):
            tq = max(m.query_ids.shape[1] for m in memories)
            qids = torch.cat([torch.nn.functional.pad(m.query_ids, (0, tq - m.query_ids.shape[1]))
                              for m in memories])
            qmask = torch.cat([torch.nn.functional.pad(m.query_mask,
                                                       (0, tq - m.query_mask.shape[1]))
                               for m in memories])
        first = memories[0]
        out = CompressedMemory([], None, max(m.num_segments for m in memories), ctx,
                               first._fingerprint, cap=None, query_ids=qids,
                               query_mask=qmask,
                               lengths=torch.tensor(lengths, dtype=torch.long,
                                                    device=hidden.device),
                               hidden=hidden,
                               owner=None if first._owner is None else first._owner())
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write a versioned safetensors file (written to a temp file, then renamed)."""
        from safetensors.torch import save_file

        tensors = {"hidden": _own_copy(self.hidden),
                   "lengths": _own_copy(self.lengths),
                   "context_tokens": _own_copy(self.context_tokens)}
        if self.state is not None:
            tensors["state"] = _own_copy(self.state)
        if self.query_ids is not None:
            tensors["query_ids"] = _own_copy(self.query_ids)
            tensors["query_mask"] = _own_copy(self.query_mask.to(torch.long))
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "fingerprint": self.fingerprint,
                "num_segments": str(self.num_segments), "uniform": json.dumps(self.uniform),
                "cap": json.dumps(self.cap), "num_slots": str(len(self.slots))}
        path = os.fspath(path)
        tmp = f"{path}.tmp-{os.getpid()}"
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: "LCIRCForCausalLM") -> "CompressedMemory":
        """Load a memory saved by `save`; refuses memories made by a different model/config."""
        from safetensors import safe_open

        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no memory file at {path}")
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{path} is not a safetensors memory file: {e}") from e
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not an lcirc_fast memory (format={meta.get('format')!r})")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path} has memory format version {meta.get('version')!r}; this "
                             f"lcirc_fast reads version {FORMAT_VERSION}")
        expected = model.fingerprint()
        if meta.get("fingerprint") != expected:
            raise ValueError(
                f"{path} was made by a different model: its fingerprint "
                f"{meta.get('fingerprint', '')[:16]}... does not match this model's "
                f"{expected[:16]}... (config or compressor weights differ)")
        dev, dt = model.device, model.dtype
        hidden = tensors["hidden"].to(dev, dt)
        state = tensors["state"].to(dev, dt) if "state" in tensors else None
        qids = tensors.get("query_ids")
        qmask = tensors.get("query_mask")
        uniform = json.loads(meta["uniform"])
        cap = json.loads(meta["cap"])
        k = model.config.num_latents
        common = dict(num_segments=int(meta["num_segments"]),
                      context_tokens=tensors["context_tokens"].to(dev), fingerprint=expected,
                      owner=model,
                      cap=cap, query_ids=None if qids is None else qids.to(dev),
                      query_mask=None if qmask is None else qmask.to(dev).bool())
        if uniform:
            slots = list(hidden.split(k, dim=1)) if hidden.shape[1] % k == 0 else [hidden]
            return cls(slots, state, **common)
        return cls([], state, lengths=tensors["lengths"].to(dev), hidden=hidden, **common)
