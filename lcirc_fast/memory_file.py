"""The memory file format, its one validator and its version migrations.

A memory file is a safetensors file whose metadata names the format (`FORMAT`), its version, the
fingerprint of the model that made it, the plain values of `CompressedMemory.state_dict()` and a
SHA-256 over the metadata and tensors (`content_checksum`).

The checksum catches corruption (a flipped bit, a truncated copy, an edit without re-hashing); it
does not authenticate: anyone can edit a file and compute the checksum again. `check_state` is
what stands between such a file and the model: it checks every value and count against the
others and against the model (shapes, dtypes, the segment count against the vectors and tokens,
flags against the tensors present, token ids against the vocabulary, and a magnitude bound that
the compressor's final LayerNorm cannot exceed, see `output_bound`). A file edited consistently
and within those bounds still loads: it is then a memory the model could have made.

`read` / `write` speak files; `check_state` checks a `state_dict()`-layout dict, from a file or
from memory, against a model.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import Any

import torch

from .errors import MemoryFileError
from .modules.zero import whole

FORMAT = "lcirc_fast.memory"
FORMAT_VERSION = "3"      # 2: sha256 checksum of the content; 3: the Truncated(k) stream records
READ_VERSIONS = ("2", FORMAT_VERSION)

FLOAT_TENSORS = ("hidden", "state")
REQUIRED_TENSORS = ("hidden", "lengths", "context_tokens")
KNOWN_TENSORS = REQUIRED_TENSORS + ("state", "query_ids", "query_mask")
PLAIN_KEYS = ("num_segments", "uniform", "cap", "num_slots", "fingerprint")
STATE_KEYS = KNOWN_TENSORS + ("records",) + PLAIN_KEYS
META_KEYS = ("format", "version", "fingerprint", "num_segments", "uniform", "cap", "num_slots",
             "record_steps", "checksum")
REWRITE = "compress the context again to write a new memory file"

# relative slack on `output_bound` for rounding (bf16 keeps 8 significant bits)
_BOUND_SLACK = 2.0 ** -5


def record_names(j: int) -> tuple[str, str]:
    """File names of stream record j's tensors: (segment ids, input state)."""
    return f"record.{j}.segment_ids", f"record.{j}.input_state"


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


def output_bound(compressor) -> torch.Tensor:
    """float32 [d]: the largest magnitude each channel of the compressor's output can take.

    The output is LayerNorm(z) = weight * x + bias, where x = (z - mean) / sqrt(var + eps) has
    zero mean and mean square at most 1 over d channels; one entry of such an x is at most
    sqrt(d - 1) in magnitude. So |output_c| <= sqrt(d - 1) * |weight_c| + |bias_c|.
    """
    weight, bias = whole(compressor.norm.weight, compressor.norm.bias)
    d = weight.shape[0]
    return math.sqrt(d - 1) * weight.detach().float().abs().cpu() + bias.detach().float().abs().cpu()


# ---------------------------------------------------------------------- writing

def write(path: str, state: dict[str, Any]) -> None:
    """Write a `state_dict()` to `path` (a temp file beside it, then renamed); MemoryFileError
    naming `path` when it cannot be written or the memory holds NaN or Inf."""
    from safetensors.torch import save_file

    for name in FLOAT_TENSORS:
        if state[name] is not None and not bool(torch.isfinite(state[name]).all()):
            raise MemoryFileError(
                f"refusing to write {path}: the memory's {name!r} holds NaN or Inf (the "
                f"model diverged or overflowed its dtype); nothing was written")
    _check_target(path)
    meta, tensors = _flatten(state)
    meta["checksum"] = content_checksum(meta, tensors)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except Exception as e:     # OSError, or safetensors' own error naming its temp file
        reason = e.strerror if isinstance(e, OSError) and e.strerror else \
            re.sub(r'\s*at path ".*"$', "", str(e))
        raise MemoryFileError(f"cannot write {path}: {reason}; nothing was written") from e
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _check_target(path: str) -> None:
    """A path that a file can be written to: not a directory, in a directory that exists."""
    if os.path.isdir(path):
        raise MemoryFileError(f"cannot write {path}: it is a directory; pass a file path such "
                              f"as {os.path.join(path, 'memory.safetensors')}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        what = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise MemoryFileError(f"cannot write {path}: {parent} {what}; create the directory "
                              f"first or pass another path")


def _flatten(state: dict[str, Any]) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """`state_dict()` output -> (file metadata without checksum, flat named tensors)."""
    tensors = {name: state[name] for name in KNOWN_TENSORS if state[name] is not None}
    for j, rec in enumerate(state["records"]):
        ids_name, state_name = record_names(j)
        tensors[ids_name] = rec["segment_ids"]
        if rec["input_state"] is not None:
            tensors[state_name] = rec["input_state"]
    meta = {"format": FORMAT, "version": FORMAT_VERSION, "fingerprint": state["fingerprint"],
            "num_segments": str(state["num_segments"]), "uniform": json.dumps(state["uniform"]),
            "cap": json.dumps(state["cap"]), "num_slots": str(state["num_slots"]),
            "record_steps": json.dumps([rec["step"] for rec in state["records"]])}
    return meta, tensors


# ---------------------------------------------------------------------- reading

def read(path: str) -> dict[str, Any]:
    """The `state_dict()` a memory file holds, after its format, version and checksum are
    checked and older versions migrated; the values are checked by `check_state`."""
    meta, tensors = _read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise MemoryFileError(f"{path} is not an lcirc_fast memory (metadata format="
                              f"{meta.get('format')!r}, expected {FORMAT!r})")
    version = meta.get("version")
    readable = " and ".join(READ_VERSIONS)
    if version == "1":
        raise MemoryFileError(f"{path} has memory format version 1, which has no checksum; this "
                              f"lcirc_fast reads versions {readable}: {REWRITE}")
    if version not in READ_VERSIONS:
        raise MemoryFileError(f"{path} has memory format version {version!r}; this lcirc_fast "
                              f"reads versions {readable}: {REWRITE}")
    signed = dict(meta)
    meta = _MIGRATIONS.get(version, dict)(meta)
    missing = [k for k in META_KEYS if k not in meta]
    if missing:
        raise MemoryFileError(f"{path} lacks the metadata key(s) {missing}; the file is "
                              f"incomplete: {REWRITE}")
    if content_checksum(signed, tensors) != meta["checksum"]:
        raise MemoryFileError(f"{path} fails its checksum: its content changed after it was "
                              f"written (a corrupt copy or an edit); {REWRITE}")
    return _unflatten(path, meta, tensors)


def _from_v2(meta: dict[str, str]) -> dict[str, str]:
    """Version 2 was written before stream records were kept."""
    return {**meta, "record_steps": "[]"}


_MIGRATIONS = {"2": _from_v2}      # version -> its metadata in the current layout


def _read_safetensors(path: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
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
                              f"truncated or of another kind: {REWRITE}") from e
    return meta or {}, tensors


def _parsed(path: str, meta: dict[str, str], key: str, parse, expected: str):
    try:
        return parse(meta[key])
    except ValueError:          # json.JSONDecodeError is a ValueError
        raise MemoryFileError(f"{path}: metadata {key!r} is {meta[key]!r}, expected "
                              f"{expected}; {REWRITE}") from None


def _unflatten(path: str, meta: dict[str, str], tensors: dict[str, torch.Tensor]
               ) -> dict[str, Any]:
    """File metadata and tensors -> the `state_dict()` layout (values parsed, not yet checked)."""
    state: dict[str, Any] = {
        "num_segments": _parsed(path, meta, "num_segments", int, _EXPECTED["num_segments"]),
        "uniform": _parsed(path, meta, "uniform", json.loads, _EXPECTED["uniform"]),
        "cap": _parsed(path, meta, "cap", json.loads, _EXPECTED["cap"]),
        "num_slots": _parsed(path, meta, "num_slots", int, "an int >= 0"),
        "fingerprint": meta["fingerprint"]}
    steps = _parsed(path, meta, "record_steps", json.loads, "a JSON list of step indices")
    if not isinstance(steps, list) or not all(type(x) is int for x in steps):
        raise MemoryFileError(f"{path}: metadata 'record_steps' is {meta['record_steps']!r}, "
                              f"expected a JSON list of step indices; {REWRITE}")
    known = set(KNOWN_TENSORS).union(*(record_names(j) for j in range(len(steps))))
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise MemoryFileError(f"{path} holds tensors that are not part of a memory: unknown "
                              f"{unknown}; {REWRITE}")
    state.update({name: tensors.get(name) for name in KNOWN_TENSORS})
    state["records"] = []
    for j, step in enumerate(steps):
        ids_name, state_name = record_names(j)
        if ids_name not in tensors:
            raise MemoryFileError(f"{path} does not hold the memory tensors: missing "
                                  f"[{ids_name!r}]; {REWRITE}")
        state["records"].append({"segment_ids": tensors[ids_name],
                                 "input_state": tensors.get(state_name), "step": step})
    return state


# ---------------------------------------------------------------------- the validator

_EXPECTED = {"num_segments": "an int >= 1", "uniform": "true or false",
             "cap": "null or an int >= 1", "fingerprint": "a non-empty string"}
_VALID = {"num_segments": lambda v: type(v) is int and v >= 1,
          "uniform": lambda v: isinstance(v, bool),
          "cap": lambda v: v is None or (type(v) is int and v >= 1),
          "fingerprint": lambda v: isinstance(v, str) and bool(v)}


def _error(source: str, name: str, problem: str) -> MemoryFileError:
    return MemoryFileError(f"{source}: {name!r} {problem}; {REWRITE}")


def check_layout(state, source: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Keys, plain values and tensor presence of a `state_dict()`; returns (its plain values
    with ``record_steps``, its tensors by file name)."""
    if not isinstance(state, dict):
        raise MemoryFileError(f"{source} is not a memory state (a dict from "
                              f"CompressedMemory.state_dict), got {type(state).__name__}")
    missing = [k for k in STATE_KEYS if k not in state]
    unknown = sorted(set(state) - set(STATE_KEYS))
    if missing or unknown:
        raise MemoryFileError(f"{source} does not hold a memory state: missing {missing}, "
                              f"unknown {unknown}")
    info = {k: state[k] for k in PLAIN_KEYS}
    for key, ok in _VALID.items():
        if not ok(info[key]):
            raise _error(source, key, f"is {info[key]!r}, expected {_EXPECTED[key]}")
    if type(info["num_slots"]) is not int or info["num_slots"] < 0:
        raise _error(source, "num_slots", f"is {info['num_slots']!r}, expected an int >= 0")
    tensors = {name: state[name] for name in KNOWN_TENSORS if state[name] is not None}
    absent = [name for name in REQUIRED_TENSORS if name not in tensors]
    if absent:
        raise MemoryFileError(f"{source} does not hold the memory tensors: missing {absent}; "
                              f"{REWRITE}")
    if ("query_ids" in tensors) != ("query_mask" in tensors):
        raise MemoryFileError(f"{source} holds only one of 'query_ids' / 'query_mask'; {REWRITE}")
    records = state["records"]
    if not isinstance(records, list):
        raise _error(source, "records", f"must be a list, got {type(records).__name__}")
    steps = []
    for j, rec in enumerate(records):
        if not isinstance(rec, dict) or set(rec) != {"segment_ids", "input_state", "step"} \
                or type(rec["step"]) is not int:
            raise MemoryFileError(f"{source}: records[{j}] must be a dict of segment_ids, "
                                  f"input_state and an int step")
        ids_name, state_name = record_names(j)
        tensors[ids_name] = rec["segment_ids"]
        if rec["input_state"] is not None:
            tensors[state_name] = rec["input_state"]
        steps.append(rec["step"])
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise _error(source, name, f"must be a tensor, got {type(t).__name__}")
    info["record_steps"] = steps
    return info, tensors


def check_values(source: str, info: dict, tensors: dict[str, torch.Tensor], model) -> None:
    """Dtypes, shapes, values and counts of a memory's tensors against each other and against
    `model` (its `config` and compressor); MemoryFileError naming `source` and the field."""
    cfg = model.config
    d, k = cfg.hidden_size, cfg.num_latents
    _check_shape(source, "hidden", tensors["hidden"], (None, None, d), floating=True)
    b, m = tensors["hidden"].shape[:2]
    _check_shape(source, "lengths", tensors["lengths"], (b,), floating=False)
    _check_shape(source, "context_tokens", tensors["context_tokens"], (b,), floating=False)
    _check_flags(source, info, tensors, m, k, bool(cfg.query_dependent))
    if "state" in tensors:
        _check_shape(source, "state", tensors["state"], (b, k, d), floating=True)
    bound = output_bound(model.compressor)
    for name in FLOAT_TENSORS:
        if name in tensors:
            _check_magnitude(source, name, tensors[name], bound)
    if info["uniform"]:
        _check_uniform(source, info, tensors, m, k, cfg.max_segment_len)
    else:
        _check_stacked(source, info, tensors, m, k, cfg.max_segment_len)
    if "query_ids" in tensors:
        _check_query(source, tensors, b, cfg.vocab_size)
    _check_records(source, info, tensors, b, cfg, bound)


def _check_shape(source: str, name: str, t: torch.Tensor, shape: tuple, floating: bool) -> None:
    """dtype kind and shape (None in `shape` matches any size >= 1)."""
    if floating and not t.dtype.is_floating_point:
        raise _error(source, name, f"has dtype {t.dtype}, expected a floating-point dtype")
    if not floating and t.dtype != torch.long:
        raise _error(source, name, f"has dtype {t.dtype}, expected torch.int64")
    got = tuple(t.shape)
    if len(got) != len(shape) or any(s is not None and g != s for g, s in zip(got, shape)) \
            or any(g < 1 for g in got):
        want = ", ".join("*" if s is None else str(s) for s in shape)
        raise _error(source, name, f"has shape {got}, expected ({want})")


def _check_magnitude(source: str, name: str, t: torch.Tensor, bound: torch.Tensor) -> None:
    """Finite, and |t| per channel within what the compressor's final LayerNorm can produce."""
    if not bool(torch.isfinite(t).all()):
        raise _error(source, name, "holds NaN or Inf")
    peak = t.detach().abs().float().reshape(-1, t.shape[-1]).amax(0).cpu()
    over = peak > bound * (1 + _BOUND_SLACK) + 1e-6
    if bool(over.any()):
        c = int(over.nonzero()[0])
        raise _error(source, name, f"holds {float(peak[c]):.4g} in channel {c}, beyond the "
                     f"{float(bound[c]):.4g} that the compressor's final LayerNorm can produce "
                     f"(sqrt(d-1)*|weight|+|bias|): not a memory this model made")


def _check_flags(source: str, info: dict, tensors: dict, m: int, k: int, qd: bool) -> None:
    """`uniform` and the query against the tensors present."""
    if info["uniform"]:
        if "state" not in tensors:
            raise _error(source, "state", "is missing (a memory that can be appended to needs it)")
    else:
        if "state" in tensors or info["record_steps"]:
            raise _error(source, "uniform", "is false (a stacked memory), but the memory holds a "
                         "recurrent state or stream records, which only a uniform memory has")
    if ("query_ids" in tensors) != qd:
        raise _error(source, "query_ids", "is missing: the model is query-dependent" if qd else
                     "is present, but the model is not query-dependent")


def _check_tokens(source: str, tokens: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
                  max_segment_len: int) -> None:
    bad = (tokens < low) | (tokens > high)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise _error(source, "context_tokens", f"is {int(tokens[i])} for item {i}, but its "
                     f"memory covers {int(low[i])} to {int(high[i]) // max_segment_len} segments "
                     f"of 1 to {max_segment_len} tokens, so {int(low[i])} to {int(high[i])} tokens")


def _check_uniform(source: str, info: dict, tensors: dict, m: int, k: int,
                   max_segment_len: int) -> None:
    """Vectors = min(segments x latents, cap); lengths all m; state = the newest vectors;
    tokens within what the segments can hold."""
    s, cap = info["num_segments"], info["cap"]
    expected = s * k if cap is None else min(s * k, cap)
    if m != expected:
        raise _error(source, "hidden", f"holds {m} vectors per item, but {s} segments of {k} "
                     f"latents (cap {cap}) make {expected}")
    slots = -(-m // k)
    if info["num_slots"] != slots:
        raise _error(source, "num_slots", f"is {info['num_slots']}, but {m} vectors of "
                     f"{k}-latent steps make {slots} slots")
    lengths = tensors["lengths"]
    if bool((lengths != m).any()):
        raise _error(source, "lengths", f"is {lengths.tolist()}, expected {m} per item")
    w = min(k, m)
    if not torch.equal(tensors["state"][:, -w:], tensors["hidden"][:, -w:]):
        raise _error(source, "state", "differs from the newest memory vectors (the last step's "
                     "output is both)")
    n = torch.full_like(tensors["context_tokens"], s)
    _check_tokens(source, tensors["context_tokens"], n, n * max_segment_len, max_segment_len)


def _check_stacked(source: str, info: dict, tensors: dict, m: int, k: int,
                   max_segment_len: int) -> None:
    """Each item's length is min(its segments x latents, cap), the longest is m; its tokens
    within what its segments can hold."""
    s, cap = info["num_segments"], info["cap"]
    lengths = tensors["lengths"]
    most = s * k if cap is None else min(s * k, cap)
    capped = lengths == cap if cap is not None else torch.zeros_like(lengths, dtype=torch.bool)
    if bool((lengths < 1).any()) or int(lengths.max()) != m or m > most \
            or bool(((lengths % k != 0) & ~capped).any()):
        raise _error(source, "lengths", f"is {lengths.tolist()}, expected multiples of {k} "
                     f"latents{'' if cap is None else f' or the cap {cap}'} in [1, {min(m, most)}]"
                     f" with the longest equal to the {m} vectors of 'hidden'")
    if info["num_slots"] != 0:
        raise _error(source, "num_slots", f"is {info['num_slots']}, expected 0 for a stacked "
                     f"memory")
    low = torch.where(capped, -(-lengths // k), lengths // k)
    high = torch.where(capped, torch.full_like(lengths, s), lengths // k) * max_segment_len
    _check_tokens(source, tensors["context_tokens"], low, high, max_segment_len)


def _check_query(source: str, tensors: dict, b: int, vocab_size: int) -> None:
    ids, mask = tensors["query_ids"], tensors["query_mask"]
    _check_shape(source, "query_ids", ids, (b, None), floating=False)
    _check_shape(source, "query_mask", mask, tuple(ids.shape), floating=False)
    if bool((ids < 0).any()) or bool((ids >= vocab_size).any()):
        raise _error(source, "query_ids", f"holds token ids outside the vocabulary "
                                          f"[0, {vocab_size})")
    if bool(((mask != 0) & (mask != 1)).any()) or not bool(mask.any(-1).all()):
        raise _error(source, "query_mask", "must hold 0/1 with at least one 1 per row")


def _check_records(source: str, info: dict, tensors: dict, b: int, cfg, bound: torch.Tensor
                   ) -> None:
    """Stream records: recent steps in order, valid token ids, input states where due."""
    steps, s = info["record_steps"], info["num_segments"]
    if any(not 0 <= x < s for x in steps) or steps != sorted(set(steps)):
        raise MemoryFileError(f"{source}: record steps {steps} must be distinct increasing step "
                              f"indices below num_segments={s}; {REWRITE}")
    for j, step in enumerate(steps):
        ids_name, state_name = record_names(j)
        ids = tensors[ids_name]
        _check_shape(source, ids_name, ids, (b, None), floating=False)
        if ids.shape[1] > cfg.max_segment_len or bool((ids < 0).any()) \
                or bool((ids >= cfg.vocab_size).any()):
            raise _error(source, ids_name, f"must hold at most {cfg.max_segment_len} token ids "
                                           f"in [0, {cfg.vocab_size})")
        if (state_name in tensors) != (step > 0):
            raise _error(source, state_name, "must be present exactly for steps after the first")
        if state_name in tensors:
            _check_shape(source, state_name, tensors[state_name],
                         (b, cfg.num_latents, cfg.hidden_size), floating=True)
            _check_magnitude(source, state_name, tensors[state_name], bound)
