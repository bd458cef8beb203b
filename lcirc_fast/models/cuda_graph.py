"""CUDA-graph replay of the compressor's graph-free recurrence step (GPU only).

`PerceiverCompressor.step` is a chain of ~45 small kernels per segment (64-row matrix products,
norms, attention over the segment's precomputed K/V). Once the K/V products are hoisted, launching
those kernels from Python is what limits a long compression. With ``LCIRCConfig.cuda_graphs = True``
(default False) every step that runs without an autograd graph is replayed from a captured CUDA
graph instead:

* one graph per key (batch, segment length, dtype, backend, device), least recently used evicted
  beyond `StepGraphCache.max_graphs`;
* static input buffers hold the state [B, K, d] and the K/V of every layer (one
  [B, L, layers, 2, H, Dh] tensor); each step copies its inputs in, replays, and returns a copy
  of the static output;
* the step runs twice on a side stream before capture (kernel compilation, autotuning and library
  handles stay outside the graph);
* all graphs are dropped when any compressor parameter changes (its storage pointer or its
  ``_version`` counter), so an optimizer step or a weight load leads to a fresh capture.

It is bypassed, with the eager step run instead, on any device other than CUDA, while autograd is
recording (``torch.is_grad_enabled()``), inside another capture, and for K/V whose layers disagree
in shape or dtype. GPU only: the CUDA capture (`CudaGraphCapture`) runs only on a CUDA device
and is not covered by the CPU test suite; the CPU tests drive the same keys, buffers,
invalidation and bypass policy through `EagerCapture`, a stand-in that re-runs the step instead
of replaying a graph. `benchmarks/gpu_suite.py` (section compress128k) compares replayed and
eager memories on the GPU.
"""
from __future__ import annotations

import weakref
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch

KVs = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class StepKey:
    """What one captured graph is specialised to."""

    batch: int
    seg_len: int
    dtype: torch.dtype
    backend: str
    device: str


class CudaGraphCapture:
    """Capture with `torch.cuda.CUDAGraph` after `warmup` eager runs on a side stream."""

    requires_cuda = True

    def __init__(self, warmup: int = 2):
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1, got {warmup!r}")
        self.warmup = warmup

    def capture(self, fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        """Returns (replay, static output)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph.replay, out


class EagerCapture:
    """Stand-in capturer for machines without a GPU: 'replay' re-runs the step on the static
    buffers and writes the static output, so the cache logic can be tested on CPU."""

    requires_cuda = False

    def __init__(self):
        self.captures = 0

    def capture(self, fn: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor]:
        self.captures += 1
        out = fn()

        def replay() -> None:
            out.copy_(fn())
        return replay, out


class _Entry:
    def __init__(self, state: torch.Tensor, kv: torch.Tensor, replay, out: torch.Tensor):
        self.state, self.kv, self.replay, self.out = state, kv, replay, out


class StepGraphCache:
    """Captured graphs of `compressor.step`, keyed by `StepKey`.

    `stats` counts "capture", "replay" and "bypass:<reason>" events; `invalidations` counts
    weight changes that dropped the graphs.
    """

    def __init__(self, compressor: torch.nn.Module, capturer=None, max_graphs: int = 4):
        if isinstance(max_graphs, bool) or not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f"max_graphs must be an int >= 1, got {max_graphs!r}")
        self.compressor = compressor
        self.capturer = capturer if capturer is not None else CudaGraphCapture()
        self.max_graphs = max_graphs
        self.graphs: OrderedDict[StepKey, _Entry] = OrderedDict()
        self.stats: Counter = Counter()
        self.invalidations = 0
        self._weights_key: tuple | None = None

    # ------------------------------------------------------------------ policy
    def bypass_reason(self, state: torch.Tensor, kvs: KVs) -> str | None:
        """Why this step must run eagerly (None: it can be replayed)."""
        if torch.is_grad_enabled():
            return "grad-enabled"
        if self.capturer.requires_cuda:
            if state.device.type != "cuda":
                return f"device-{state.device.type}"
            if torch.cuda.is_current_stream_capturing():
                return "already-capturing"
        if len(kvs) != len(self.compressor.layers):
            return "kv-layer-count"
        ref = kvs[0][0]
        for k, v in kvs:
            if k.shape != ref.shape or v.shape != ref.shape or k.dtype != ref.dtype \
                    or v.dtype != ref.dtype or k.device != ref.device or v.device != ref.device:
                return "kv-mismatch"
        if state.dim() != 3 or state.shape[0] != ref.shape[0] or state.dtype != ref.dtype \
                or state.device != ref.device:
            return "state-mismatch"
        return None

    def key(self, state: torch.Tensor, kvs: KVs) -> StepKey:
        k = kvs[0][0]
        return StepKey(int(state.shape[0]), int(k.shape[1]), state.dtype, self.compressor.ops.backend,
                       str(state.device))

    def _current_weights(self) -> tuple:
        return tuple((p.data_ptr(), p._version) for p in self.compressor.parameters())

    def _check_weights(self) -> None:
        now = self._current_weights()
        if self._weights_key is not None and now != self._weights_key and self.graphs:
            self.graphs.clear()
            self.invalidations += 1
        self._weights_key = now

    # ------------------------------------------------------------------ capture / replay
    def _capture(self, key: StepKey, state: torch.Tensor, kvs: KVs) -> _Entry:
        c = self.compressor
        b, length, heads, hd = kvs[0][0].shape
        n = len(kvs)
        s_buf = torch.empty((b, *state.shape[1:]), dtype=state.dtype, device=state.device)
        kv_buf = torch.empty((b, length, n, 2, heads, hd), dtype=kvs[0][0].dtype,
                             device=state.device)
        views = [(kv_buf[:, :, j, 0], kv_buf[:, :, j, 1]) for j in range(n)]
        entry = _Entry(s_buf, kv_buf, None, None)
        self._fill(entry, state, kvs)
        try:
            replay, out = self.capturer.capture(lambda: c.step(s_buf, views))
        except Exception as exc:
            raise RuntimeError(f"capturing the compressor step as a CUDA graph failed for {key}: "
                               f"{type(exc).__name__}: {exc}; call model.configure(cuda_graphs=False) to "
                               f"run it eagerly") from exc
        entry.replay, entry.out = replay, out
        self.stats["capture"] += 1
        return entry

    @staticmethod
    def _fill(entry: _Entry, state: torch.Tensor, kvs: KVs) -> None:
        entry.state.copy_(state)
        for j, (k, v) in enumerate(kvs):
            entry.kv[:, :, j, 0].copy_(k)
            entry.kv[:, :, j, 1].copy_(v)

    def step(self, state: torch.Tensor, kvs: KVs) -> torch.Tensor:
        """`compressor.step(state, kvs)`, replayed from a graph where allowed."""
        reason = self.bypass_reason(state, kvs)
        if reason is not None:
            self.stats["bypass:" + reason] += 1
            return self.compressor.step(state, kvs)
        self._check_weights()
        key = self.key(state, kvs)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self._capture(key, state, kvs)
            self.graphs[key] = entry
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        else:
            self.graphs.move_to_end(key)
            self._fill(entry, state, kvs)
        entry.replay()
        self.stats["replay"] += 1
        return entry.out.clone()

    def clear(self) -> None:
        self.graphs.clear()


_CACHES: "weakref.WeakKeyDictionary[torch.nn.Module, StepGraphCache]" = weakref.WeakKeyDictionary()


def graph_cache(model: torch.nn.Module, capturer=None, max_graphs: int | None = None
                ) -> StepGraphCache:
    """The model's step-graph cache (created on first use; kept outside the module's state).

    Passing `capturer` or `max_graphs` replaces the cache with a new, empty one.
    """
    cache = _CACHES.get(model)
    if cache is None or cache.compressor is not model.compressor or capturer is not None \
            or max_graphs is not None:
        cache = StepGraphCache(model.compressor, capturer, 4 if max_graphs is None else max_graphs)
        _CACHES[model] = cache
    return cache


def graphed_step(model: torch.nn.Module, state: torch.Tensor, kvs: KVs) -> torch.Tensor:
    """One graph-free compressor step of `model`: state [B, K, d], per-layer K/V
    [B, L, H, Dh] -> new state [B, K, d]; replayed when the policy allows, eager otherwise."""
    return graph_cache(model).step(state, kvs)


def stats(model: torch.nn.Module) -> Counter:
    """Counts of captures, replays and bypass reasons for `model` so far."""
    cache = _CACHES.get(model)
    return Counter() if cache is None else Counter(cache.stats)


def clear(model: torch.nn.Module) -> None:
    """Forget every graph (and the counters) captured for `model`."""
    _CACHES.pop(model, None)
