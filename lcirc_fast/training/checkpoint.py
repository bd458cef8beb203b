"""Checkpoints: files that load without running code, and the policy of when and where they go.

A checkpoint directory holds states written by :func:`save_state` (``<name>.safetensors`` for the
tensors, ``<name>.json`` for the structure around them), the engine's own files, and a
``manifest.json`` written last with the size and SHA-256 of every file. :func:`verify_checkpoint`
checks the manifest before anything is loaded; :func:`safe_torch_load` reads ``.pt`` files with
``weights_only=True`` and an explicit allow-list, so no file is ever unpickled freely.
:class:`Checkpoints` writes ``checkpoints/step<N>`` atomically, keeps the newest
``train.keep_last``, picks the newest usable one to resume from, and publishes the ``best`` and
``final`` weights.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from .run_dir import fresh_dir, remove_tree, replace_text, writable

FORMAT = "lcirc-checkpoint/2"
MANIFEST = "manifest.json"
_MARKERS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__")


# ---------------------------------------------------------------- nested state <-> JSON + tensors
def pack(obj, tensors: dict, where: str = "state"):
    """JSON-able tree for `obj`; its tensors (and numpy arrays) go into `tensors` by key."""
    if isinstance(obj, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__ndarray__": key, "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, list):
        return [pack(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: pack(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"__dict__": [[pack(k, tensors, where), pack(v, tensors, f"{where}[{k!r}]")]
                             for k, v in obj.items()]}
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be stored in a checkpoint")


def unpack(tree, tensors: dict, where: str = "state"):
    """Inverse of :func:`pack`; a malformed tree raises CheckpointError naming `where`."""
    if isinstance(tree, list):
        return [unpack(v, tensors, f"{where}[{i}]") for i, v in enumerate(tree)]
    if not isinstance(tree, dict):
        return tree
    marker = next((k for k in _MARKERS if k in tree), None)
    if marker is None:
        return {k: unpack(v, tensors, f"{where}.{k}") for k, v in tree.items()}
    try:
        return _unpack_marked(marker, tree, tensors, where)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: malformed {marker} entry ({e})") from None


def _unpack_marked(marker: str, tree: dict, tensors: dict, where: str):
    value = tree[marker]
    if marker == "__tensor__":
        return tensors[value]
    if marker == "__ndarray__":
        dtype = np.dtype(tree["dtype"])
        if dtype.kind not in "biuf":
            raise ValueError(f"dtype {dtype} is not numeric")
        return tensors[value].numpy().astype(dtype, copy=True)
    if marker == "__tuple__":
        return tuple(unpack(v, tensors, f"{where}[{i}]") for i, v in enumerate(value))
    if marker == "__float__":
        if value not in ("inf", "-inf", "nan"):
            raise ValueError(f"{value!r} is not inf, -inf or nan")
        return float(value)
    return {unpack(k, tensors, where): unpack(v, tensors, f"{where}[{k!r}]") for k, v in value}


def save_state(directory: Path, name: str, obj) -> None:
    """Write `obj` as <name>.safetensors (tensors) and <name>.json (everything else)."""
    from safetensors.torch import save_file

    tensors: dict = {}
    tree = pack(obj, tensors, name)
    save_file(tensors, str(directory / f"{name}.safetensors"))
    (directory / f"{name}.json").write_text(json.dumps({"format": FORMAT, "state": tree}))


def load_state(directory: Path, name: str):
    """Read what :func:`save_state` wrote; any problem is a CheckpointError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    jpath, tpath = directory / f"{name}.json", directory / f"{name}.safetensors"
    try:
        doc = json.loads(jpath.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {jpath} is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"checkpoint file {jpath} is not valid JSON ({e!r})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "state" not in doc:
        raise CheckpointError(f"checkpoint file {jpath} is not an {FORMAT} state file")
    try:
        tensors = load_file(str(tpath))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {tpath} is missing") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint file {tpath} is not a readable safetensors file ({e})") from None
    try:
        return unpack(doc["state"], tensors, str(jpath))
    except RecursionError:
        raise CheckpointError(f"checkpoint file {jpath} is nested too deeply to be a state") from None


# ---------------------------------------------------------------- .pt files (DeepSpeed)
def safe_torch_load(path, map_location=None, allowed: tuple = ()):
    """torch.load with weights_only=True: only tensors, containers and the `allowed` classes."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except Exception as e:  # noqa: BLE001 - any failure means the file is refused
        raise CheckpointError(f"refusing checkpoint file {path}: it does not load as plain tensors "
                              f"and allowed types (weights_only=True): {torch_load_reason(e)}") from None


@contextlib.contextmanager
def weights_only_loads(allowed: tuple = ()):
    """Within the block, every torch.load (even one asking for weights_only=False, as DeepSpeed's
    loaders do) unpickles only tensors, containers and the `allowed` classes."""
    keys = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    before = {k: os.environ.pop(k, None) for k in keys}
    os.environ[keys[0]] = "1"
    try:
        with torch.serialization.safe_globals(list(allowed)):
            yield
    finally:
        for k, v in before.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v


def torch_load_reason(err: Exception) -> str:
    """The line of a torch.load error that says what was wrong (not its general advice)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    specific = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation"))]
    return (specific or lines or [type(err).__name__])[0]


# ---------------------------------------------------------------- manifest and verification
def _digest(path: Path, sync: bool = False) -> str:
    """SHA-256 of a file; `sync` also flushes it to disk."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
        if sync:
            os.fsync(f.fileno())
    return h.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(directory: Path, step: int) -> None:
    """Record the size and SHA-256 of every file; written last, so its presence means complete."""
    files = {p.relative_to(directory).as_posix(): {"size": p.stat().st_size, "sha256": _digest(p, sync=True)}
             for p in _files(directory)}
    tmp = directory / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"format": FORMAT, "step": step, "files": files}, indent=1))
    os.replace(tmp, directory / MANIFEST)


def _old_format(directory: Path) -> bool:
    """Written before this format: a pickled state.pt, or DeepSpeed files without trainer states."""
    return (directory / "state.pt").is_file() or (
        any(directory.glob("*.pt")) and not any(directory.glob("trainer_rank*.json")))


def verify_checkpoint(directory: Path) -> int:
    """Optimizer step of a complete checkpoint; CheckpointError saying what is wrong otherwise."""
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} not found")
    mpath = directory / MANIFEST
    if not mpath.is_file():
        if _old_format(directory):
            raise CheckpointError(
                f"checkpoint {directory} is in the old pickle format, which is no longer loaded "
                "because unpickling a file can run code; start fresh (--resume none, or a new output_dir)")
        raise CheckpointError(f"checkpoint {directory} is incomplete: it has no {MANIFEST}")
    try:
        man = json.loads(mpath.read_text())
        files, step = man["files"], man["step"]
        if man["format"] != FORMAT or not isinstance(files, dict) or not isinstance(step, int):
            raise ValueError(f"not an {FORMAT} manifest")
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} is unreadable ({e})") from None
    for rel, meta in files.items():
        _verify_file(directory, rel, meta)
    return step


def _verify_file(directory: Path, rel: str, meta) -> None:
    path = directory / rel
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise CheckpointError(f"checkpoint {directory}: {MANIFEST} names a path outside it: {rel!r}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} is incomplete: {rel} is missing")
    if not isinstance(meta, dict) or path.stat().st_size != meta.get("size"):
        raise CheckpointError(f"checkpoint {directory} is corrupt: {rel} has {path.stat().st_size} "
                              f"bytes, the manifest says {meta.get('size') if isinstance(meta, dict) else meta}")
    if _digest(path) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {directory} is corrupt: the SHA-256 of {rel} does not match")




# ---------------------------------------------------------------- the policy
class Checkpoints:
    """The checkpoints of a run in `out`: ``checkpoints/step<N>`` (written by every rank through
    `engine`, finished by rank 0), ``checkpoints/LATEST``, and the ``best`` / ``final`` weights.
    `warn(msg)` reports a checkpoint that is skipped (called on rank 0 only)."""

    def __init__(self, out: Path, engine, keep_last: int, warn):
        self.out = Path(out)
        self.dir = self.out / "checkpoints"
        self.engine, self.keep_last, self.warn = engine, keep_last, warn

    def prepare(self) -> None:
        """Rank 0: make checkpoints/ (a link there is refused)."""
        writable(self.dir).mkdir(parents=True, exist_ok=True)

    def save(self, step: int, client_state: dict) -> Path:
        """Write checkpoints/step<N> atomically (temp dir, manifest, rename), point LATEST at it
        and remove all but the newest `keep_last`. Every rank calls it."""
        rank = self.engine.rank
        name = f"step{step:07d}"
        tmp = self.dir / f".tmp-{name}"
        final = self.dir / name
        if rank == 0:
            fresh_dir(tmp)
        self.engine.barrier()
        self.engine.save(tmp)
        save_state(tmp, f"trainer_rank{rank}", client_state)
        self.engine.barrier()
        if rank == 0:
            write_manifest(tmp, step)
            remove_tree(final)
            os.rename(tmp, final)
            replace_text(self.dir / "LATEST", name)
            steps = sorted(p for p in self.dir.glob("step*") if p.is_dir() and not p.is_symlink())
            for old in steps[:-max(1, self.keep_last)]:
                remove_tree(old)
        self.engine.barrier()
        return final

    def pick(self, resume: str) -> Path | None:
        """The checkpoint `resume` names ('auto': the newest complete one, or None if there is
        none; 'none': None; else a directory). Rank 0 picks and verifies; every rank gets its choice."""
        if resume == "none":
            return None
        code = 0
        if self.engine.rank == 0:
            try:
                code = self._newest_usable() if resume == "auto" else max(1, verify_checkpoint(Path(resume)))
            except Exception:
                self.engine.broadcast_int(-1)  # the other ranks stop too
                raise
        code = self.engine.broadcast_int(code)
        if code < 0:
            raise CheckpointError(f"rank 0 found no usable checkpoint for --resume {resume} (see its error)")
        if code == 0:
            return None
        return self.dir / f"step{code:07d}" if resume == "auto" else Path(resume)

    def _newest_usable(self) -> int:
        """Step of the newest verifiable checkpoint in checkpoints/ (0 if there is none at all);
        each newer one that fails verification is named in a warning."""
        found = sorted((p for p in self.dir.glob("step*") if p.is_dir()), reverse=True)
        latest = self.dir / "LATEST"
        named = latest.read_text().strip() if latest.is_file() else None
        if named and not (self.dir / named).is_dir():
            self.warn(f"LATEST names checkpoint {self.dir / named}, which is missing")
        if not found:
            if named:
                raise CheckpointError(f"no checkpoint left in {self.dir} although LATEST names "
                                      f"{named}; start fresh with --resume none or a new output_dir")
            return 0
        reasons = []
        for p in found:
            try:
                step = verify_checkpoint(p)
                if p.name != f"step{step:07d}":
                    raise CheckpointError(f"checkpoint {p}: its manifest is for optimizer step {step}")
                return step
            except CheckpointError as e:
                reasons.append(str(e))
                self.warn(f"skipping checkpoint {p}: {e}")
        why = "; ".join(reasons)
        advice = "" if "start fresh" in why else "; start fresh with --resume none or a new output_dir"
        raise CheckpointError(f"no usable checkpoint in {self.dir}: {why}{advice}")

    def load(self, path: Path, restore) -> None:
        """Load the engine's files of checkpoint `path`, then `restore(trainer state)`; a state
        that does not fit this run is a CheckpointError naming the checkpoint."""
        rank, world = self.engine.rank, self.engine.world
        name = f"trainer_rank{rank}"
        if not (path / f"{name}.json").is_file():
            raise CheckpointError(f"checkpoint {path} has no {name}.json: it was written by fewer "
                                  f"processes than this run's {world}")
        st = load_state(path, name)
        try:
            if st["world"] != world:
                raise ValueError(f"it was written by {st['world']} processes, this run has {world}")
            self.engine.load(path)
            restore(st)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise CheckpointError(f"checkpoint {path}: cannot restore the trainer state ({e!r})") from None

    def publish(self, model, name: str, metrics: dict | None = None) -> Path:
        """Write `model.save_pretrained` (and metrics.json when given) as out/<name>, replacing the
        old one whole (temp dir, rename). Every rank calls it (a collective under ZeRO-3)."""
        target = self.out / name
        with self.engine.whole_weights():
            if self.engine.rank == 0:
                tmp = fresh_dir(self.out / f".{name}.tmp")
                model.save_pretrained(tmp)
                if metrics is not None:
                    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
                remove_tree(target)
                os.rename(tmp, target)
        self.engine.barrier()
        return target
