"""CompressedMemory: the concatenated compressor outputs of one or more documents.

It holds the per-step slots h(1..S) (each [B, K, d]), the recurrent state for streaming more
segments, the recent segments that Truncated(k) streaming re-runs, the QD query (if any), and a
cache of each GCA layer's projected keys/values so that decoding projects the memory once.

A memory does not know the model class: the model that streams into it is passed to `append`,
and `load` / `from_state_dict` read only a model's public `config`, `device`, `dtype` and
`fingerprint()`.
"""
from __future__ import annotations

import hashlib
import json
import os
import weakref
from dataclasses import dataclass
from typing import Any

import torch

from .errors import DataError, MemoryFileError

FORMAT = "lcirc_fast.memory"
FORMAT_VERSION = "3"      # 2: sha256 checksum of the content; 3: the Truncated(k) stream records
READ_VERSIONS = ("2", FORMAT_VERSION)


def _own_copy(t: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU copy that shares storage with no other tensor.

    safetensors refuses tensors that share memory, and a one-segment memory's `hidden` is its
    `state`.
    """
    return t.detach().to("cpu", copy=True).contiguous()


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
        records: the last k-1 steps (`StreamRecord`) of a Truncated(k) compression, which
            `append` re-runs with a graph.

    A memory is always accepted by the model object that made it, also after that model's
    weights were updated (training streams memories across optimizer steps); any other model
    must have the same fingerprint.
    """

    def __init__(self, slots, state, num_segments, context_tokens, fingerprint=None, cap=None,
                 query_ids=None, query_mask=None, lengths=None, hidden=None, owner=None,
                 records=None):
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
        self.records: list[StreamRecord] = list(records or [])
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
    def append(self, model, segment_ids: torch.Tensor, bptt=None) -> "CompressedMemory":
        """Compress one more segment ([B, L] or [L] token ids) into this memory with `model`
        (an `LCIRCForCausalLM`), in place; returns self.

        Streaming a document segment by segment gives the same memory as compressing it at
        once with the same boundaries. `bptt` as in `LCIRCForCausalLM.compress`; Selective
        needs explicit `steps` (global step indices) when streaming.
        """
        model.append(self, segment_ids, bptt)
        return self

    def cached_kv(self, key) -> Any:
        """The GCA keys/values cached under `key` (None when absent or stale)."""
        return self._kv_cache["kv"] if self._kv_cache.get("key") == key else None

    def store_kv(self, key, kv) -> None:
        """Cache the GCA keys/values `kv` of this memory under `key` (replacing any other)."""
        self._kv_cache = {"key": key, "kv": kv}

    def detach_(self) -> "CompressedMemory":
        """Cut every autograd graph the memory holds (after its loss was back-propagated)."""
        self.slots = [s.detach() for s in self.slots]
        if self.state is not None:
            self.state = self.state.detach()
        if self._hidden is not None:
            self._hidden = self._hidden.detach()
        self.invalidate_cache()
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
                            for r in self.records],
                "num_segments": self.num_segments, "uniform": self.uniform, "cap": self.cap,
                "num_slots": len(self.slots), "fingerprint": self.fingerprint}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], model, source: str = "memory state"
                        ) -> "CompressedMemory":
        """Rebuild a memory from `state_dict()` output for `model` (on its device and dtype).

        Checks that `model` has the fingerprint the state names, and every tensor's dtype,
        shape and values; raises MemoryFileError naming `source` and the problem.
        """
        info, tensors = _split_state(source, state)
        expected = model.fingerprint()
        if info["fingerprint"] != expected:
            raise MemoryFileError(
                f"{source} was made by a different model: its fingerprint "
                f"{str(info['fingerprint'])[:16]}... does not match this model's "
                f"{expected[:16]}... (config or compressor weights differ); load it with the "
                f"model that compressed it, or compress the context again")
        _check_tensors(source, info, tensors, model)
        dev, dt = model.device, model.dtype
        hidden = tensors["hidden"].to(dev, dt)
        state_t = tensors["state"].to(dev, dt) if "state" in tensors else None
        qids, qmask = tensors.get("query_ids"), tensors.get("query_mask")
        records = [StreamRecord(tensors[f"record.{j}.segment_ids"].to(dev),
                                tensors[f"record.{j}.input_state"].to(dev, dt)
                                if f"record.{j}.input_state" in tensors else None, step)
                   for j, step in enumerate(info["record_steps"])]
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
        content (written to a temp file, then renamed). Refuses a memory holding NaN or Inf."""
        from safetensors.torch import save_file

        path = os.fspath(path)
        if self.fingerprint is None:
            raise MemoryFileError(f"cannot write {path}: the model that made this memory no "
                                  f"longer exists, so the file could not name it; save the "
                                  f"memory while its model is alive")
        state = self.state_dict()
        for name in _FLOAT_TENSORS:
            if state[name] is not None and not bool(torch.isfinite(state[name]).all()):
                raise MemoryFileError(
                    f"refusing to write {path}: the memory's {name!r} holds NaN or Inf (the "
                    f"model diverged or overflowed its dtype); nothing was written")
        meta, tensors = _flatten_state(state)
        meta["checksum"] = content_checksum(meta, tensors)
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, model) -> "CompressedMemory":
        """Load a memory saved by `save` for `model` (an `LCIRCForCausalLM`).

        Checks the format, version, metadata, checksum, that the model that made it has this
        model's fingerprint, and the tensors' dtypes, shapes and values; raises MemoryFileError
        naming the file and the problem. Version-2 files (no stream records) are read too.
        """
        path = os.fspath(path)
        meta, tensors = _read_file(path)
        info = _check_file(path, meta, tensors)
        return cls.from_state_dict(_unflatten_state(info, tensors), model, source=path)


# ---------------------------------------------------------------------- memory files
_FLOAT_TENSORS = ("hidden", "state")
_REQUIRED_TENSORS = ("hidden", "lengths", "context_tokens")
_KNOWN_TENSORS = _REQUIRED_TENSORS + ("state", "query_ids", "query_mask")
_OPTIONAL_TENSORS = ("state", "query_ids", "query_mask")
_KNOWN_TENSORS = _REQUIRED_TENSORS + _OPTIONAL_TENSORS
_META_KEYS = ("format", "version", "fingerprint", "num_segments", "uniform", "cap", "num_slots",
              "checksum")
_META_KEYS_V3 = _META_KEYS + ("record_steps",)
_STATE_KEYS = _KNOWN_TENSORS + ("records", "num_segments", "uniform", "cap", "num_slots",
                                "fingerprint")
_REWRITE = "compress the context again to write a new memory file"


def _record_names(j: int) -> tuple[str, str]:
    return f"record.{j}.segment_ids", f"record.{j}.input_state"


def _flatten_state(state: dict[str, Any]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """`state_dict()` output -> (file metadata without checksum, flat named tensors)."""
    tensors = {name: state[name] for name in _KNOWN_TENSORS if state[name] is not None}
    for j, rec in enumerate(state["records"]):
        ids_name, state_name = _record_names(j)
        tensors[ids_name] = rec["segment_ids"]
        if rec["input_state"] is not None:
            tensors[state_name] = rec["input_state"]
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "fingerprint": state["fingerprint"],
            "num_segments": str(state["num_segments"]), "uniform": json.dumps(state["uniform"]),
            "cap": json.dumps(state["cap"]), "num_slots": str(state["num_slots"]),
            "record_steps": json.dumps([rec["step"] for rec in state["records"]])}
    return meta, tensors


def _unflatten_state(info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A checked file's parsed metadata (`_check_file`) and tensors -> the `state_dict()`
    layout."""
    info = dict(info)
    state: dict[str, Any] = {name: tensors.get(name) for name in _KNOWN_TENSORS}
    state["records"] = []
    for j, step in enumerate(info.pop("record_steps")):
        ids_name, state_name = _record_names(j)
        state["records"].append({"segment_ids": tensors[ids_name],
                                 "input_state": tensors.get(state_name), "step": step})
    state.update(info)
    return state


def _split_state(source: str, state) -> tuple[dict, dict[str, torch.Tensor]]:
    """Check the layout of a `state_dict()`; return (its plain values, its tensors by file name)."""
    if not isinstance(state, dict):
        raise MemoryFileError(f"{source} is not a memory state (a dict from "
                              f"CompressedMemory.state_dict), got {type(state).__name__}")
    missing = [k for k in _STATE_KEYS if k not in state]
    unknown = sorted(set(state) - set(_STATE_KEYS))
    if missing or unknown:
        raise MemoryFileError(f"{source} does not hold a memory state: missing {missing}, "
                              f"unknown {unknown}")
    info = {k: state[k] for k in ("num_segments", "uniform", "cap", "num_slots", "fingerprint")}
    ok = {"num_segments": lambda v: type(v) is int and v >= 1,
          "uniform": lambda v: isinstance(v, bool),
          "cap": lambda v: v is None or (type(v) is int and v >= 1),
          "num_slots": lambda v: type(v) is int and 0 <= v <= info["num_segments"],
          "fingerprint": lambda v: isinstance(v, str) and bool(v)}
    for key, test in ok.items():      # num_segments first: num_slots' test reads it
        if not test(info[key]):
            raise MemoryFileError(f"{source}: {key!r} is {info[key]!r}, which is not valid")
    tensors = {name: state[name] for name in _KNOWN_TENSORS if state[name] is not None}
    absent = [name for name in _REQUIRED_TENSORS if name not in tensors]
    if absent or ("query_ids" in tensors) != ("query_mask" in tensors):
        raise MemoryFileError(f"{source}: the tensors {absent or ['query_ids', 'query_mask']} "
                              f"must be given (query_ids and query_mask together)")
    records = state["records"]
    if not isinstance(records, list):
        raise MemoryFileError(f"{source}: 'records' must be a list, got {type(records).__name__}")
    steps = []
    for j, rec in enumerate(records):
        if not isinstance(rec, dict) or set(rec) != {"segment_ids", "input_state", "step"} \
                or type(rec["step"]) is not int:
            raise MemoryFileError(f"{source}: records[{j}] must be a dict of segment_ids, "
                                  f"input_state and an int step")
        ids_name, state_name = _record_names(j)
        tensors[ids_name] = rec["segment_ids"]
        if rec["input_state"] is not None:
            tensors[state_name] = rec["input_state"]
        steps.append(rec["step"])
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise MemoryFileError(f"{source}: {name!r} must be a tensor, got {type(t).__name__}")
    info["record_steps"] = steps
    return info, tensors


def content_checksum(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the metadata (except the checksum) and each tensor's name, dtype, shape and
    bytes, in name order."""
    h = hashlib.sha256()
    for key in sorted(k for k in meta if k != "checksum"):
        h.update(f"meta:{key}={meta[key]}\n".encode())
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"tensor:{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def _read_file(path: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file; MemoryFileError when it cannot be read."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise MemoryFileError(f"no memory file at {path}; check the path (memory files are "
                              f"written by CompressedMemory.save or `lcirc compress`)")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise MemoryFileError(f"{path} is not a safetensors memory file ({e}); the file is "
                              f"truncated or of another kind: {_REWRITE}") from e
    return meta or {}, tensors


def _check_file(path: str, meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> dict:
    """Check format, version, metadata keys, tensor names and checksum; return the parsed
    metadata (`_parse_meta`, with the fingerprint; a version-2 file has no `record_steps`)."""
    if meta.get("format") != FORMAT:
        raise MemoryFileError(f"{path} is not an lcirc_fast memory (metadata format="
                              f"{meta.get('format')!r}, expected {FORMAT!r})")
    version = meta.get("version")
    readable = " and ".join(READ_VERSIONS)
    if version == "1":
        raise MemoryFileError(f"{path} has memory format version 1, which has no checksum; this "
                              f"lcirc_fast reads versions {readable}: {_REWRITE}")
    if version not in READ_VERSIONS:
        raise MemoryFileError(f"{path} has memory format version {version!r}; this lcirc_fast "
                              f"reads versions {readable}: {_REWRITE}")
    if version == "2":
        meta = {**meta, "record_steps": "[]"}   # written before stream records were kept
    missing = [k for k in _META_KEYS_V3 if k not in meta]
    if missing:
        raise MemoryFileError(f"{path} lacks the metadata key(s) {missing}; the file is "
                              f"incomplete: {_REWRITE}")
    info = _parse_meta(path, meta)
    steps = info["record_steps"]
    known = set(_KNOWN_TENSORS).union(*(_record_names(j) for j in range(len(steps))))
    absent = [k for k in _REQUIRED_TENSORS if k not in tensors]
    absent += [_record_names(j)[0] for j in range(len(steps)) if _record_names(j)[0] not in tensors]
    unknown = sorted(set(tensors) - known)
    if absent or unknown:
        raise MemoryFileError(f"{path} does not hold the memory tensors: missing {absent}, "
                              f"unknown {unknown}; {_REWRITE}")
    if ("query_ids" in tensors) != ("query_mask" in tensors):
        raise MemoryFileError(f"{path} holds only one of 'query_ids' / 'query_mask'; {_REWRITE}")
    signed = meta if version != "2" else {k: v for k, v in meta.items() if k != "record_steps"}
    if content_checksum(signed, tensors) != meta["checksum"]:
        raise MemoryFileError(f"{path} fails its checksum: its content changed after it was "
                              f"written (a corrupt copy or an edit); {_REWRITE}")
    return {**info, "fingerprint": meta["fingerprint"]}


def _parse_meta(path: str, meta: dict[str, str]) -> dict:
    """The metadata values, each checked for type and range."""
    num_segments = _meta_value(path, meta, "num_segments", int, "an int >= 1",
                               lambda v: v >= 1)
    uniform = _meta_value(path, meta, "uniform", json.loads, "true or false",
                          lambda v: isinstance(v, bool))
    cap = _meta_value(path, meta, "cap", json.loads, "null or an int >= 1",
                      lambda v: v is None or (type(v) is int and v >= 1))
    num_slots = _meta_value(path, meta, "num_slots", int,
                            f"an int in [0, num_segments={num_segments}]",
                            lambda v: 0 <= v <= num_segments)
    steps = _meta_value(path, meta, "record_steps", json.loads,
                        "a JSON list of step indices",
                        lambda v: isinstance(v, list) and all(type(x) is int for x in v))
    return {"num_segments": num_segments, "uniform": uniform, "cap": cap, "num_slots": num_slots,
            "record_steps": steps}


def _meta_value(path: str, meta: dict[str, str], key: str, parse, expected: str, ok):
    """meta[key] parsed by `parse` and accepted by `ok`, else MemoryFileError."""
    try:
        value = parse(meta[key])
    except ValueError:          # json.JSONDecodeError is a ValueError
        value, valid = None, False
    else:
        valid = ok(value)
    if not valid:
        raise MemoryFileError(f"{path}: metadata {key!r} is {meta[key]!r}, expected {expected}; "
                              f"{_REWRITE}")
    return value


def _tensor_error(path: str, name: str, problem: str) -> MemoryFileError:
    return MemoryFileError(f"{path}: tensor {name!r} {problem}; {_REWRITE}")


def _check_layout(path: str, name: str, t: torch.Tensor, shape: tuple, floating: bool) -> None:
    """dtype kind and shape (None in `shape` matches any size >= 1)."""
    if floating and not t.dtype.is_floating_point:
        raise _tensor_error(path, name, f"has dtype {t.dtype}, expected a floating-point dtype")
    if not floating and t.dtype != torch.long:
        raise _tensor_error(path, name, f"has dtype {t.dtype}, expected torch.int64")
    got = tuple(t.shape)
    if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)) \
            or any(g < 1 for g in got):
        want = ", ".join("*" if s is None else str(s) for s in shape)
        raise _tensor_error(path, name, f"has shape {got}, expected ({want})")


def _check_tensors(path: str, info: dict, tensors: dict[str, torch.Tensor], model) -> None:
    """Dtypes, shapes and values of a memory file's tensors against `model`'s config."""
    cfg = model.config
    d, k = cfg.hidden_size, cfg.num_latents
    _check_layout(path, "hidden", tensors["hidden"], (None, None, d), floating=True)
    b, m = tensors["hidden"].shape[:2]
    if info["uniform"] and "state" not in tensors:
        raise _tensor_error(path, "state", "is missing (a memory that can be appended to needs "
                                           "it)")
    if "state" in tensors:
        _check_layout(path, "state", tensors["state"], (b, k, d), floating=True)
    for name in _FLOAT_TENSORS:
        if name in tensors and not bool(torch.isfinite(tensors[name]).all()):
            raise _tensor_error(path, name, "holds NaN or Inf")
    _check_layout(path, "lengths", tensors["lengths"], (b,), floating=False)
    _check_layout(path, "context_tokens", tensors["context_tokens"], (b,), floating=False)
    _check_counts(path, info, tensors, m, k)
    if "query_ids" in tensors:
        _check_query(path, tensors, b, cfg.vocab_size)
    _check_records(path, info, tensors, b, cfg)


def _check_records(path: str, info: dict, tensors: dict, b: int, cfg) -> None:
    """Stream records: only in uniform memories, recent steps in order, valid tensors."""
    steps, s = info["record_steps"], info["num_segments"]
    if steps and not info["uniform"]:
        raise _tensor_error(path, "record.0.segment_ids", "is present, but a stacked memory "
                                                          "cannot be streamed into")
    if any(not 0 <= x < s for x in steps) or steps != sorted(set(steps)):
        raise MemoryFileError(f"{path}: record steps {steps} must be distinct increasing step "
                              f"indices below num_segments={s}; {_REWRITE}")
    for j, step in enumerate(steps):
        ids_name, state_name = _record_names(j)
        ids = tensors[ids_name]
        _check_layout(path, ids_name, ids, (b, None), floating=False)
        if ids.shape[1] > cfg.max_segment_len or bool((ids < 0).any()) \
                or bool((ids >= cfg.vocab_size).any()):
            raise _tensor_error(path, ids_name, f"must hold at most {cfg.max_segment_len} token "
                                                f"ids in [0, {cfg.vocab_size})")
        if (state_name in tensors) != (step > 0):
            raise _tensor_error(path, state_name, "must be present exactly for steps after the "
                                                  "first")
        if state_name in tensors:
            st = tensors[state_name]
            _check_layout(path, state_name, st, (b, cfg.num_latents, cfg.hidden_size),
                          floating=True)
            if not bool(torch.isfinite(st).all()):
                raise _tensor_error(path, state_name, "holds NaN or Inf")


def _check_counts(path: str, info: dict, tensors: dict, m: int, k: int) -> None:
    """Memory length, per-item lengths and token counts consistent with the segment count."""
    s, cap = info["num_segments"], info["cap"]
    lengths = tensors["lengths"]
    if info["uniform"]:
        expected = s * k if cap is None else min(s * k, cap)
        if m != expected:
            raise _tensor_error(path, "hidden", f"holds {m} vectors per item, but "
                                f"{s} segments of {k} latents (cap {cap}) make {expected}")
        if bool((lengths != m).any()):
            raise _tensor_error(path, "lengths", f"is {lengths.tolist()}, expected {m} per item")
    else:
        if m > s * k:
            raise _tensor_error(path, "hidden", f"holds {m} vectors per item, more than {s} "
                                f"segments of {k} latents make")
        if bool((lengths < 1).any()) or int(lengths.max()) != m:
            raise _tensor_error(path, "lengths", f"is {lengths.tolist()}, expected values in "
                                f"[1, {m}] with the longest equal to {m}")
    if bool((tensors["context_tokens"] < 1).any()):
        raise _tensor_error(path, "context_tokens", f"is {tensors['context_tokens'].tolist()}, "
                            f"expected token counts >= 1")


def _check_query(path: str, tensors: dict, b: int, vocab_size: int) -> None:
    ids, mask = tensors["query_ids"], tensors["query_mask"]
    _check_layout(path, "query_ids", ids, (b, None), floating=False)
    _check_layout(path, "query_mask", mask, tuple(ids.shape), floating=False)
    if bool((ids < 0).any()) or bool((ids >= vocab_size).any()):
        raise _tensor_error(path, "query_ids", f"holds token ids outside the vocabulary "
                                               f"[0, {vocab_size})")
    if bool(((mask != 0) & (mask != 1)).any()) or not bool(mask.any(-1).all()):
        raise _tensor_error(path, "query_mask", "must hold 0/1 with at least one 1 per row")
