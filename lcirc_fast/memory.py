"""CompressedMemory: the concatenated compressor outputs of one or more documents.

It holds the per-step slots h(1..S) (each [B, K, d]), the recurrent state for streaming more
segments, the recent segments that Truncated(k) streaming re-runs, the QD query (if any), and a
cache of each GCA layer's projected keys/values so that decoding projects the memory once.

The memory owns its state: the recurrence changes it only through `add_step`, `replace_step` and
`detach_`, and every change keeps the caches coherent (no caller drops them by hand).

A memory does not know the model class: the model that streams into it is passed to `append`,
and `load` / `from_state_dict` read only a model's public `config`, `device`, `dtype`,
`fingerprint()` and its compressor's final norm (`memory_file.output_bound`). The file format
and its checks live in `memory_file`.
"""
from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from . import memory_file
from .errors import DataError, MemoryFileError
from .memory_file import FORMAT, FORMAT_VERSION, READ_VERSIONS, content_checksum  # noqa: F401

__all__ = ["CompressedMemory", "StreamRecord", "slots_from_hidden", "content_checksum", "FORMAT",
           "FORMAT_VERSION", "READ_VERSIONS"]


def _own_copy(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU copy that shares storage with no other tensor.

    safetensors refuses tensors that share memory, and a one-segment memory's `hidden` is its
    `state`.
    """
    return t.detach().to("cpu", copy=True).contiguous()


def _detached(t: torch.Tensor) -> torch.Tensor:
    return t.detach() if t.requires_grad else t


@dataclass
class StreamRecord:
    """One recent step, kept so that Truncated(k) streaming can re-run it with a graph."""
    segment_ids: torch.Tensor              # int64 [B, L]
    input_state: torch.Tensor | None       # [B, K, d] detached state entering it; None: h0
    step: int                              # global step index


def slots_from_hidden(hidden: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Split a uniform memory [B, M, d] into per-step slots of `k` vectors, newest last; a
    capped memory's oldest slot may be partial."""
    m = hidden.shape[1]
    first = m % k
    widths = ([first] if first else []) + [k] * (m // k)
    return list(hidden.split(widths, dim=1))


def _check_model(model) -> None:
    if not (callable(getattr(model, "fingerprint", None)) and hasattr(model, "config")):
        raise TypeError(f"model must be the LCIRCForCausalLM that compressed the memory (or one "
                        f"with the same fingerprint), got {type(model).__name__}")


class CompressedMemory:
    """Compressed memory of a batch of documents.

    Read-only attributes (change them through the operations below):
        slots: tuple of [B, K, d] tensors, oldest first (only those kept under the memory cap).
        state: [B, K, d] the last compressor output (input of the next step), or None.
        num_segments: recurrence steps taken so far.
        context_tokens: int64 [B], tokens compressed per item.
        records: the last k-1 steps (`StreamRecord`) of a Truncated(k) compression, which
            `append` re-runs with a graph (a new list on every read).
    Other attributes:
        query_ids / query_mask: [B, Tq] QD query (None for plain LCIRC).
        lengths: int64 [B] valid memory vectors per item (items of a stacked batch may differ).
        fingerprint: the fingerprint (`LCIRCForCausalLM.fingerprint`) of the model that made
            it, computed when first needed (saving, or use with another model object).
        selected_steps: the steps a Selective policy gave a graph, or None.

    A memory is always accepted by the model object that made it, also after that model's
    weights were updated (training streams memories across optimizer steps); any other model
    must have the same fingerprint.
    """

    def __init__(self, slots, state, num_segments, context_tokens, fingerprint=None, cap=None,
                 query_ids=None, query_mask=None, lengths=None, hidden=None, owner=None,
                 records=None, selected_steps=None):
        self._slots = list(slots)
        self._state = state
        self._num_segments = int(num_segments)
        self._context_tokens = context_tokens
        self._fingerprint = fingerprint
        self._owner = None if owner is None else weakref.ref(owner)
        self.owner_uid = None if owner is None else owner.uid
        self.cap = cap
        self.query_ids = query_ids
        self.query_mask = query_mask
        self._lengths = lengths
        self._hidden = hidden          # set for stacked (padded) memories
        self._kv_cache: dict = {}
        self._concat: tuple | None = None   # (slots, their versions, cap, concatenated hidden)
        self._records: list[StreamRecord] = list(records or [])
        self.selected_steps: list[int] | None = selected_steps
        self.prune()

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
    def slots(self) -> tuple[torch.Tensor, ...]:
        return tuple(self._slots)

    @property
    def state(self) -> torch.Tensor | None:
        return self._state

    @property
    def num_segments(self) -> int:
        return self._num_segments

    @property
    def context_tokens(self) -> torch.Tensor:
        return self._context_tokens

    @property
    def records(self) -> list[StreamRecord]:
        return list(self._records)

    @property
    def hidden(self) -> torch.Tensor:
        """[B, M, d]: the memory the GCA blocks read (capped to the newest `cap` vectors)."""
        if self._hidden is not None:
            return self._hidden
        versions = tuple(s._version for s in self._slots)
        c = self._concat
        if c is not None and c[2] == self.cap and c[1] == versions and len(c[0]) == len(self._slots) \
                and all(a is b for a, b in zip(c[0], self._slots)):
            return c[3]
        h = self._slots[0] if len(self._slots) == 1 else torch.cat(self._slots, dim=1)
        if self.cap is not None and h.shape[1] > self.cap:
            h = h[:, -self.cap:]
        self._concat = (tuple(self._slots), versions, self.cap, h)
        return h

    def _first(self) -> torch.Tensor:
        return self._hidden if self._hidden is not None else self._slots[0]

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
    def append(self, model, segment_ids: torch.Tensor, bptt=None) -> "CompressedMemory":
        """Compress one more segment ([B, L] or [L] token ids) into this memory with `model`
        (an `LCIRCForCausalLM`), in place; returns self.

        Streaming a document segment by segment gives the same memory as compressing it at
        once with the same boundaries. `bptt` as in `LCIRCForCausalLM.compress`; Selective
        needs explicit `steps` (global step indices) when streaming.
        """
        model.append(self, segment_ids, bptt)
        return self

    def add_step(self, output: torch.Tensor, tokens: int, records: list[StreamRecord] | None = None,
                 graph_window: int | None = None) -> None:
        """Record one recurrence step: `output` [B, K, d] becomes the newest slot and the state,
        `tokens` (the segment's length) are added to `context_tokens`, and slots wholly outside
        the cap are dropped.

        `records` replaces the stream records when given; `graph_window` keeps autograd graphs
        only in the newest `graph_window` slots (older ones are constants for later losses).
        """
        if not self.uniform:
            raise DataError("cannot append to a stacked memory of different lengths; append to "
                            "each document's memory before stacking")
        self._slots.append(output)
        if graph_window is not None:
            old = max(0, len(self._slots) - graph_window)
            self._slots[:old] = [_detached(s) for s in self._slots[:old]]
        self._state = output
        self._num_segments += 1
        self._context_tokens = self._context_tokens + tokens
        if records is not None:
            self._records = list(records)
        self._changed()
        self.prune()

    def replace_step(self, step: int, output: torch.Tensor) -> None:
        """Replace the slot of global step `step` with `output` [B, K, d] (a re-run of that step
        with a graph); a step no longer kept under the cap is ignored."""
        pos = len(self._slots) - (self._num_segments - step)
        if 0 <= pos < len(self._slots):
            self._slots[pos] = output
            self._changed()

    def prune(self) -> None:
        """Drop slots that lie wholly outside the memory cap (every operation already does)."""
        if self.cap is None:
            return
        dropped = False
        while len(self._slots) > 1 and sum(s.shape[1] for s in self._slots[1:]) >= self.cap:
            self._slots.pop(0)
            dropped = True
        if dropped:
            self._changed()

    def detach_(self) -> "CompressedMemory":
        """Cut every autograd graph the memory holds (after its loss was back-propagated)."""
        self._slots = [s.detach() for s in self._slots]
        if self._state is not None:
            self._state = self._state.detach()
        if self._hidden is not None:
            self._hidden = self._hidden.detach()
        self._changed()
        return self

    # ------------------------------------------------------------------ caches
    def cached_kv(self, key) -> Any:
        """The GCA keys/values cached under `key` for the current `hidden` (None when absent or
        stale)."""
        c = self._kv_cache
        if c.get("key") == key and c.get("hidden") is self.hidden:
            return c["kv"]
        return None

    def store_kv(self, key, kv) -> None:
        """Cache the GCA keys/values `kv` of the current `hidden` under `key` (replacing any
        other)."""
        self._kv_cache = {"key": key, "kv": kv, "hidden": self.hidden}

    def invalidate_cache(self) -> None:
        """Drop the cached concatenation and GCA keys/values, freeing their memory. Never needed
        for correctness: the caches follow every change of the memory's tensors."""
        self._changed()

    def _changed(self) -> None:
        self._kv_cache = {}
        self._concat = None

    # ------------------------------------------------------------------ batching
    @staticmethod
    def stack(memories: list["CompressedMemory"]) -> "CompressedMemory":
        """Batch memories of different lengths (right-padded; `lengths` masks the padding).

        The result can be read by the model but not appended to.
        """
        if not memories:
            raise DataError("stack needs at least one memory")
        owners = {m.owner_uid for m in memories}
        if (len(owners) != 1 or None in owners) and len({m.fingerprint for m in memories}) != 1:
            raise DataError("cannot stack memories made by different models")
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
            raise DataError("cannot stack query-dependent and plain memories")
        qids = qmask = None
        if all(qd):
            tq = max(m.query_ids.shape[1] for m in memories)
            qids = torch.cat([torch.nn.functional.pad(m.query_ids, (0, tq - m.query_ids.shape[1]))
                              for m in memories])
            qmask = torch.cat([torch.nn.functional.pad(m.query_mask,
                                                       (0, tq - m.query_mask.shape[1]))
                               for m in memories])
        caps = {m.cap for m in memories}
        first = memories[0]
        return CompressedMemory([], None, max(m.num_segments for m in memories), ctx,
                                first._fingerprint, cap=caps.pop() if len(caps) == 1 else None,
                                query_ids=qids, query_mask=qmask,
                                lengths=torch.tensor(lengths, dtype=torch.long,
                                                     device=hidden.device),
                                hidden=hidden,
                                owner=None if first._owner is None else first._owner())

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this memory and keep streaming into it.

        Returns detached CPU copies (sharing storage with nothing) and plain values:
        ``hidden`` [B, M, d] (what the GCA blocks read), ``lengths`` / ``context_tokens`` int64
        [B], ``state`` [B, K, d] or None, ``query_ids`` / ``query_mask`` int64 [B, Tq] or None,
        ``records``: a list of {``segment_ids``, ``input_state`` (or None), ``step``},
        ``num_segments``, ``uniform``, ``cap``, ``num_slots`` and ``fingerprint``.
        `from_state_dict` reverses it.
        """
        copy = lambda t: None if t is None else _own_copy(t)  # noqa: E731
        return {"hidden": copy(self.hidden), "lengths": copy(self.lengths),
                "context_tokens": copy(self.context_tokens), "state": copy(self.state),
                "query_ids": copy(self.query_ids),
                "query_mask": None if self.query_mask is None else copy(self.query_mask.long()),
                "records": [{"segment_ids": copy(r.segment_ids),
                             "input_state": copy(r.input_state), "step": int(r.step)}
                            for r in self._records],
                "num_segments": self.num_segments, "uniform": self.uniform, "cap": self.cap,
                "num_slots": len(self._slots), "fingerprint": self.fingerprint}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], model, source: str = "memory state"
                        ) -> "CompressedMemory":
        """Rebuild a memory from `state_dict()` output for `model` (on its device and dtype).

        Checks that `model` has the fingerprint the state names, and every value and count
        (`memory_file.check_values`); raises MemoryFileError naming `source` and the field.
        """
        _check_model(model)
        info, tensors = memory_file.check_layout(state, source)
        expected = model.fingerprint()
        if info["fingerprint"] != expected:
            raise MemoryFileError(
                f"{source} was made by a different model: its fingerprint "
                f"{str(info['fingerprint'])[:16]}... does not match this model's "
                f"{expected[:16]}... (config or compressor weights differ); load it with the "
                f"model that compressed it, or compress the context again")
        memory_file.check_values(source, info, tensors, model)
        dev, dt = model.device, model.dtype
        hidden = tensors["hidden"].to(dev, dt)
        state_t = tensors["state"].to(dev, dt) if "state" in tensors else None
        qids, qmask = tensors.get("query_ids"), tensors.get("query_mask")
        records = []
        for j, step in enumerate(info["record_steps"]):
            ids_name, state_name = memory_file.record_names(j)
            entering = tensors.get(state_name)
            records.append(StreamRecord(tensors[ids_name].to(dev),
                                        None if entering is None else entering.to(dev, dt), step))
        common = dict(num_segments=info["num_segments"],
                      context_tokens=tensors["context_tokens"].to(dev), fingerprint=expected,
                      owner=model, cap=info["cap"],
                      query_ids=None if qids is None else qids.to(dev),
                      query_mask=None if qmask is None else qmask.to(dev).bool(),
                      records=records)
        if info["uniform"]:
            return cls(slots_from_hidden(hidden, model.config.num_latents), state_t, **common)
        return cls([], state_t, lengths=tensors["lengths"].to(dev), hidden=hidden, **common)

    def save(self, path: str | os.PathLike) -> None:
        """Write `state_dict()` as a versioned safetensors file with a sha256 checksum of its
        content (`memory_file`; written to a temp file, then renamed). Refuses a memory holding
        NaN or Inf, and names `path` when it cannot be written."""
        path = os.fspath(path)
        if self.fingerprint is None:
            raise MemoryFileError(f"cannot write {path}: the model that made this memory no "
                                  f"longer exists, so the file could not name it; save the "
                                  f"memory while its model is alive")
        memory_file.write(path, self.state_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, model) -> "CompressedMemory":
        """Load a memory saved by `save` for `model` (an `LCIRCForCausalLM`).

        Checks the format, version and checksum (`memory_file.read`), that the model that made
        it has this model's fingerprint, and every value and count; raises MemoryFileError
        naming the file and the field. Version-2 files (no stream records) are read too.
        """
        _check_model(model)
        path = os.fspath(path)
        return cls.from_state_dict(memory_file.read(path), model, source=path)
