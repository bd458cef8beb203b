"""A run's output_dir: which directories a run may use, its lock, its log, and safe writes.

A run writes ``.lcirc-run`` (its marker) into output_dir before anything else and uses only a
missing or empty directory or one holding that marker, so it never writes into a directory of
someone else's (a Hugging Face model, a folder of notes). Inside it, every file and directory the
run writes is created by the run itself: a symbolic link in one of the run's places is refused,
never followed, and files are replaced by renaming a fresh temp file over them.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import stat
import weakref
from pathlib import Path

from ..errors import ConfigError, RunError

MARKER = ".lcirc-run"
MARKER_TEXT = json.dumps({"format": "lcirc-run/1"}) + "\n"
# what a run writes into output_dir (a directory of only these, with a training config.json, is a
# run written before the marker existed)
RUN_NAMES = {MARKER, ".lock", "config.json", "log.jsonl", "checkpoints", "best", "final", ".best.tmp",
             ".final.tmp", ".config.json.tmp", ".log.jsonl.tmp"}
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW


def _refuse_link(path: Path) -> None:
    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link; a run writes only files it made itself and never "
                          f"follows a link there: remove the link, or use another output_dir")


def writable(path: Path) -> Path:
    """`path` if the run may write or remove it: missing, or not a symbolic link (ConfigError)."""
    path = Path(path)
    _refuse_link(path)
    return path


def claim(out: Path) -> None:
    """Make `out` this project's run directory, or refuse it (ConfigError naming what to do):
    it may be missing, empty, or hold the marker of an earlier run (to resume)."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"output_dir {out} is a symbolic link to nothing: point it at a directory, or use "
                          f"another output_dir")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file, not a directory: use a new or empty directory "
                          f"for the run")
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted(RUN_NAMES):
        _refuse_link(out / name)
    marker = out / MARKER
    if marker.exists():
        if not marker.is_file() or marker.read_text(errors="replace") != MARKER_TEXT:
            raise ConfigError(f"{marker} is not a marker written by a run; remove it, or use another "
                              f"output_dir")
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries and not _old_run(out, entries):
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ConfigError(f"output_dir {out} already holds files that are not a training run's ({shown}); "
                          f"a run only uses a new or empty directory or one of its own runs: choose "
                          f"another output_dir")
    try:
        fd = os.open(marker, _NEW, 0o644)
    except FileExistsError:        # another run claimed it at the same moment: check what it wrote
        return claim(out)
    with os.fdopen(fd, "w") as f:
        f.write(MARKER_TEXT)


def _old_run(out: Path, entries: list[str]) -> bool:
    """A run directory written before the marker: only run names, and a training config.json."""
    if not set(entries) <= RUN_NAMES or "config.json" not in entries or (out / "config.json").is_symlink():
        return False
    try:
        doc = json.loads((out / "config.json").read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(doc, dict) and {"stage", "train", "lcirc", "output_dir"} <= set(doc)


def replace_text(path: Path, text: str) -> None:
    """Write `path` as a new file (a fresh temp file renamed over it); a link there is refused."""
    path = writable(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()                     # a stale temp file of a killed run (a link is removed, not followed)
    with os.fdopen(os.open(tmp, _NEW, 0o644), "w") as f:
        f.write(text)
    os.replace(tmp, path)


def append_line(path: Path, line: str) -> None:
    """Append one line to `path` (created if missing), never through a symbolic link."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        _refuse_link(Path(path))
        raise RunError(f"cannot append to {path}: {e.strerror}") from None
    with os.fdopen(fd, "a") as f:
        f.write(line + "\n")


def remove_tree(path: Path) -> None:
    """Remove a directory the run made (nothing if missing); a link there is refused."""
    path = writable(path)
    if path.exists():
        shutil.rmtree(path)


def fresh_dir(path: Path) -> Path:
    """An empty directory at `path` made now (an old one of the run's is removed first)."""
    remove_tree(path)
    path.mkdir()
    return path


# ---------------------------------------------------------------- log.jsonl
def _step_of(line: str) -> int | None:
    """Optimizer step a log record belongs to; None for a line that is not a record."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    step = rec["validation"].get("step") if isinstance(rec.get("validation"), dict) else rec.get("step")
    return step if isinstance(step, int) else None


def truncate_log(path: Path, step: int) -> int:
    """Drop the records of optimizer steps after `step`, and a last line torn by a kill (no newline,
    not JSON); every other line is kept. Atomic; returns how many lines were dropped."""
    path = writable(path)
    if not path.is_file():
        return 0
    text = path.read_text()
    lines = text.splitlines()
    torn = bool(lines) and not text.endswith("\n") and _step_of(lines[-1]) is None
    keep = [ln for ln in (lines[:-1] if torn else lines) if (s := _step_of(ln)) is None or s <= step]
    if len(keep) == len(lines):
        return 0
    replace_text(path, "".join(ln + "\n" for ln in keep))
    return len(lines) - len(keep)


# ---------------------------------------------------------------- one run per output_dir
class RunLock:
    """An exclusive lock on <output_dir>/.lock for the life of a run (released by the OS on a crash)."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / ".lock"
        self._close = None

    def acquire(self) -> None:
        """Take the lock now, or raise RunError naming the directory and the process holding it
        (ConfigError if .lock is a link or a file that is not the run's own)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError:
            _refuse_link(self.path)
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise ConfigError(f"{self.path} is not a lock file of a run (it is linked from elsewhere or not "
                              f"a plain file); remove it, or use another output_dir")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if holder.startswith(f"pid {os.getpid()} "):
                raise RunError(f"output_dir {self.path.parent} is locked by another Trainer in this "
                               "process; call close() on it first") from None
            raise RunError(f"output_dir {self.path.parent} is in use by another training run "
                           f"({holder}); wait for it to finish or stop it, or use another output_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._close = weakref.finalize(self, os.close, fd)  # closing the file releases the lock

    @property
    def held(self) -> bool:
        return self._close is not None and self._close.alive

    def release(self) -> None:
        if self._close is not None:
            self._close()
