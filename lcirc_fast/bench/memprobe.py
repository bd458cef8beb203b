"""Peak memory of one workload, measured in isolation in a fresh process (CPU).

A helper process (`python -m lcirc_fast.bench.memprobe`) builds the same random-weight model as
the sweep, with one thread and without running any workload. For every measurement it forks a
child: the child returns freed heap to the system (`malloc_trim`), resets its peak RSS
(/proc/self/clear_refs), runs the workload once with the sweep's thread count and reports
VmHWM - VmRSS(before): the resident memory the run added at its peak, activations and
workspaces included, weights and the inherited process image excluded. Each child runs one
workload once and exits, so no allocator cache of an earlier run can hide a later one.

The parent talks to the helper over its stdin / a private copy of its stdout with
length-prefixed pickles; the helper's own prints go to stderr.
"""
from __future__ import annotations

import ctypes
import gc
import os
import pickle
import struct
import subprocess
import sys
from typing import Any

METHOD = ("peak RSS growth of one run in a fresh process (forked from a helper that holds the "
          "model): VmHWM - VmRSS before the run, after returning freed heap to the system; "
          "activations and workspaces, not weights")


def status_kb(field: str) -> int | None:
    """A /proc/self/status field in kB (VmRSS, VmHWM, ...), None where it cannot be read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_rss_growth(fn) -> int | None:
    """Bytes of resident memory `fn()` added at its peak in this process (None off Linux)."""
    gc.collect()
    _malloc_trim()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    start = status_kb("VmRSS")
    out = fn()
    hwm = status_kb("VmHWM")
    del out
    if start is None or hwm is None:
        return None
    return max(0, hwm - start) * 1024


def _send(f, obj) -> None:
    data = pickle.dumps(obj)
    f.write(struct.pack("<Q", len(data)) + data)
    f.flush()


def _recv(f):
    head = f.read(8)
    if len(head) < 8:
        raise EOFError("memory probe closed its pipe")
    (size,) = struct.unpack("<Q", head)
    return pickle.loads(f.read(size))


class ForkedProbe:
    """Parent side: `ForkedProbe(spec)`, `.measure(method, tokens) -> bytes | None`, `.close()`.

    spec: {"preset": Preset, "opts": SweepOptions, "threads": int} (pickled to the helper).
    """

    def __init__(self, spec: dict[str, Any]):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._proc = subprocess.Popen([sys.executable, "-m", "lcirc_fast.bench.memprobe"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.error: str | None = None
        try:
            _send(self._proc.stdin, spec)
            ready = _recv(self._proc.stdout)
        except (EOFError, BrokenPipeError, OSError) as exc:
            self._fail(f"memory probe did not start ({exc})")
            return
        if ready != "ready":
            self._fail(f"memory probe did not start: {ready}")

    def _fail(self, msg: str) -> None:
        self.error = msg
        self.close()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def measure(self, method: str, tokens: int) -> int | None:
        if not self.alive:
            return None
        try:
            _send(self._proc.stdin, (method, tokens))
            reply = _recv(self._proc.stdout)
        except (EOFError, BrokenPipeError, OSError) as exc:
            self._fail(f"memory probe stopped ({exc})")
            return None
        if isinstance(reply, str):     # an error in the child
            self.error = reply
            return None
        return reply

    def close(self) -> None:
        proc, self._proc = getattr(self, "_proc", None), None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                _send(proc.stdin, None)
                proc.stdin.close()
                proc.wait(timeout=30)
        except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _child(model, spec, method: str, tokens: int, w) -> None:
    import torch

    from .sweep import workloads

    try:
        torch.set_num_threads(spec["threads"])
        wl = workloads(model, spec["preset"], tokens, spec["opts"])[method]
        state = wl.setup() if wl.setup is not None else None
        grad = torch.enable_grad() if method == "train" else torch.no_grad()
        with grad:
            got = peak_rss_growth(lambda: wl.run(state) if wl.setup is not None else wl.run())
        reply: Any = got
    except BaseException as exc:  # reported to the parent, never raised across the fork
        reply = f"memory probe: {method} at {tokens} tokens failed: {type(exc).__name__}: {exc}"
    os.write(w, pickle.dumps(reply))
    os.close(w)


def _serve() -> int:
    chan_in = sys.stdin.buffer
    chan_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)                       # stray prints must not reach the channel
    spec = _recv(chan_in)
    try:
        import torch

        from .sweep import build_model

        torch.set_num_threads(1)        # no OpenMP pool before fork: children start their own
        opts = spec["opts"]
        model = build_model(spec["preset"], "cpu", opts.dtype, opts.seed)
    except BaseException as exc:
        _send(chan_out, f"{type(exc).__name__}: {exc}")
        return 1
    _send(chan_out, "ready")
    while True:
        try:
            req = _recv(chan_in)
        except EOFError:
            return 0
        if req is None:
            return 0
        method, tokens = req
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                _child(model, spec, method, tokens, w)
            finally:
                os._exit(0)
        os.close(w)
        chunks = []
        while True:
            b = os.read(r, 1 << 16)
            if not b:
                break
            chunks.append(b)
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if chunks:
            reply = pickle.loads(b"".join(chunks))
        else:
            reply = f"memory probe: {method} at {tokens} tokens died (wait status {status})"
        _send(chan_out, reply)


if __name__ == "__main__":
    sys.exit(_serve())
