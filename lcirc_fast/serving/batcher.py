"""The engine's torch thread: rows that arrive together are decoded as one batch, and every other
torch call of the engine (compression, reading stored documents) runs here too.

Prompts are left-padded; rows with different documents read their memories padded and masked
by length. Rows can share a batch when they agree on reading a document or not and on the
sampling settings (a seeded row decodes alone, so its seed alone decides its tokens).

Why one thread: each thread that runs torch's parallel CPU kernels gets its own OpenMP thread
team, and once a process holds more OpenMP threads than it has cores, GNU OpenMP stops its
workers from spinning between parallel regions. A decoding step runs hundreds of small parallel
regions, so a second team (say, compression in a request thread, or a main thread that ran
torch at 2 threads before the server started) made every question about a third slower on a
2-core machine (docs/perf/serving.md). The thread sets its own torch thread count; `lcirc serve`
keeps its main thread at one.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from concurrent.futures import Future

import torch

from ..models.generation import stream


class _Job:
    """A call to run on the batcher's thread; it never joins a batch."""

    def __init__(self, fn):
        self.fn, self.future = fn, Future()

    def batch_key(self) -> tuple:
        return ("job", id(self))


class Batcher:
    """One thread that takes up to `max_batch` compatible queued rows at a time and decodes
    them with `lcirc_fast.models.generation.stream`, and runs the calls given to `call`. After
    the first row of a batch it waits up to `wait_s` seconds for more rows to join. `threads`:
    the torch intra-op thread count of that thread (None: torch's default for a new thread)."""

    def __init__(self, engine, max_batch: int, wait_s: float = 0.01, threads: int | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.engine, self.max_batch, self.wait_s, self.threads = engine, max_batch, wait_s, threads
        self._queue: queue.Queue = queue.Queue()
        self._held: deque = deque()
        self._stop = threading.Event()
        self._closing = threading.Lock()       # no job is queued after close() has drained
        self._thread = threading.Thread(target=self._loop, name="lcirc-batcher", daemon=True)
        self._thread.start()

    def submit(self, row) -> None:
        self._queue.put(row)

    def call(self, fn):
        """Run `fn()` on the batcher's thread (between batches) and return its result or raise
        its exception; called from that thread, it runs at once."""
        if threading.current_thread() is self._thread:
            return fn()
        job = _Job(fn)
        with self._closing:
            if self._stop.is_set():
                raise RuntimeError("the engine is closed")
            self._queue.put(job)
        return job.future.result()

    def close(self) -> None:
        with self._closing:
            self._stop.set()
        self._thread.join(timeout=30)
        pending = list(self._held)
        while True:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in pending:              # nothing waits forever on a closed engine
            if isinstance(item, _Job):
                item.future.set_exception(RuntimeError("the engine is closed"))
            elif not item.extra.get("done"):
                item.sink("error", RuntimeError("the engine is closed"))

    # ------------------------------------------------------------------ batching
    def _take(self) -> list:
        """The next batch: the oldest row and the queued rows that can join it."""
        if self._held:
            first = self._held.popleft()
        else:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                return []
        if isinstance(first, _Job):
            return [first]
        key, rows, skipped = first.batch_key(), [first], deque()
        while self._held and len(rows) < self.max_batch:
            row = self._held.popleft()
            (rows if row.batch_key() == key else skipped).append(row)
        deadline = time.monotonic() + self.wait_s      # rows sent together arrive a little apart
        while len(rows) < self.max_batch:
            try:
                row = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            (rows if row.batch_key() == key else skipped).append(row)
        self._held.extendleft(reversed(skipped))
        return rows

    def _loop(self) -> None:
        if self.threads is not None:
            torch.set_num_threads(self.threads)       # this thread's own count
        while not self._stop.is_set():
            rows = self._take()
            if not rows:
                continue
            if isinstance(rows[0], _Job):
                self._run_job(rows[0])
                continue
            try:
                self.run(rows)
            except Exception as e:  # noqa: BLE001 - every row hears of the failure
                for row in rows:
                    if not row.extra.get("done"):
                        row.sink("error", e)

    @staticmethod
    def _run_job(job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            job.future.set_result(job.fn())
        except BaseException as e:  # noqa: BLE001 - the caller re-raises it
            job.future.set_exception(e)

    # ------------------------------------------------------------------ decoding
    def run(self, rows: list) -> None:
        """Decode `rows` together, sending each row's tokens to its sink as they come."""
        eng = self.engine
        eng.metrics.batch.observe(len(rows))
        eng.metrics.batch_documents.observe(len({r.doc_id for r in rows if r.doc_id}))
        dev = eng.model.device
        longest = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), longest), eng.pad, dtype=torch.long, device=dev)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, longest - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, longest - len(r.prompt_ids):] = 1
        first = rows[0]
        sample = first.temperature > 0
        gen = None
        if first.seed is not None:
            gen = torch.Generator(device=dev).manual_seed(int(first.seed))
        t0 = time.perf_counter()
        memory_kv = eng.batch_memory(rows)
        counts = [0] * len(rows)
        steps = stream(eng.model, ids, attention_mask=mask, memory_kv=memory_kv,
                       max_new_tokens=max(r.max_tokens for r in rows), do_sample=sample,
                       temperature=first.temperature if sample else 1.0,
                       top_p=first.top_p if sample and first.top_p < 1 else None,
                       eos_token_id=eng.eos, pad_token_id=eng.pad, generator=gen)
        try:
            for nxt in steps:
                for i, (r, tok) in enumerate(zip(rows, nxt.tolist())):
                    if r.extra.get("done"):
                        continue
                    if eng.eos is not None and tok == eng.eos:
                        self._finish(r, "stop")
                        continue
                    counts[i] += 1
                    r.sink("token", tok)
                    if counts[i] >= r.max_tokens:
                        self._finish(r, "length")
                if all(r.extra.get("done") for r in rows):
                    break
        finally:
            steps.close()
        for r in rows:
            if not r.extra.get("done"):
                self._finish(r, "stop")
        eng.metrics.tokens.labels("completion").inc(sum(counts))
        eng.metrics.tokens.labels("prompt").inc(sum(len(r.prompt_ids) for r in rows))
        eng.last_batch_seconds = time.perf_counter() - t0

    @staticmethod
    def _finish(row, reason: str) -> None:
        row.extra["done"] = True
        row.sink("done", reason)
