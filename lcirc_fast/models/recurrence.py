"""The recurrence h(i) = Perceiver(h(i-1), s_i): compression, streaming and their BPTT plans.

`Recurrence` drives a model's compressor (and QD mixer) over the segments of a context. Steps
that need no autograd graph and have equal lengths share one K/V product over up to
`kv_hoist_max_segments` segments ("hoisting"); with `cuda_graphs` they replay captured CUDA
graphs. It reads only public attributes of the model it serves: `latents`, `compressor`,
`mixer`, `config`, `device`, `inputs` (a `SegmentInputs`) and `owns`.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Sequence

import torch

from .. import bptt as bptt_mod
from ..errors import ConfigError, DataError
from ..memory import CompressedMemory, StreamRecord
from ..modules.zero import whole
from ..segmenting import balanced_boundaries, check_boundaries, fixed_boundaries
from . import cuda_graph
from .checks import check_ids, check_query_mask


class FoldedKV:
    """The compressor's folded K/V weight, computed at most once per graph mode per call.

    Steps with a graph share one autograd-tracked fold (so their graphs meet there: run one
    backward per compress/append call, or pass retain_graph=True); steps without one use a
    detached copy.
    """

    def __init__(self, compressor):
        self._compressor = compressor
        self._tracked = None
        self._plain = None

    def get(self, graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if graph:
            if self._tracked is None:
                self._tracked = self._compressor.folded_kv_weight()
            return self._tracked
        if self._plain is None:
            if self._tracked is not None:
                self._plain = tuple(t.detach() for t in self._tracked)
            else:
                with torch.no_grad():
                    self._plain = self._compressor.folded_kv_weight()
        return self._plain


class KVWorkspace:
    """Reusable output buffers for the hoisted K/V products on the CPU, one per thread.

    A fresh output of a large product has its pages faulted in as the product writes them
    (docs/perf/cpu-packed-gemm.md). Each thread that compresses keeps one buffer between
    products and calls, grown to its largest product (at most `kv_hoist_budget_bytes`);
    threads compressing with the same model at once never share one. `release()` frees them
    all. CUDA needs none: its caching allocator already reuses memory.
    """

    def __init__(self):
        self._bufs: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes held, over all threads."""
        with self._lock:
            return sum(b.numel() * b.element_size() for b in self._bufs.values())

    def take(self, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """A contiguous [numel] view of this thread's buffer; None off the CPU."""
        if device.type != "cpu":
            return None
        tid = threading.get_ident()
        with self._lock:
            buf = self._bufs.get(tid)
            if buf is not None and buf.dtype == dtype and buf.numel() >= numel:
                return buf[:numel]
            self._bufs.pop(tid, None)             # free the old one before allocating
        buf = torch.empty(numel, dtype=dtype, device=device)
        with self._lock:
            self._bufs[tid] = buf
        return buf

    def release(self) -> None:
        with self._lock:
            self._bufs.clear()


class Recurrence:
    """Compression and streaming for `model` (an `LCIRCForCausalLM`).

    ``workspace`` (a `KVWorkspace`) holds the CPU K/V products' output buffer between calls.
    """

    def __init__(self, model):
        self.model = model
        self.workspace = KVWorkspace()

    # ------------------------------------------------------------------ plans
    def segment_plan(self, n: int, segment_len, boundaries) -> list[int]:
        """Boundaries [0, ..., n] from explicit `boundaries`, a fixed `segment_len`, or the
        balanced ~`config.segment_len` rule."""
        cfg = self.model.config
        if boundaries is not None and segment_len is not None:
            raise ConfigError("pass either segment_len or boundaries, not both")
        if boundaries is not None:
            return check_boundaries(boundaries, n, cfg.max_segment_len)
        if segment_len is not None:
            if isinstance(segment_len, bool) or not isinstance(segment_len, int) or segment_len < 1:
                raise ConfigError(f"segment_len must be a positive int (or None for the default "
                                  f"segmenting), got {segment_len!r}")
            if segment_len > cfg.max_segment_len:
                raise ConfigError(f"segment_len={segment_len} is longer than the position table "
                                  f"({cfg.max_segment_len} rows; raise "
                                  f"LCIRCConfig.max_segment_len)")
            return fixed_boundaries(n, segment_len)
        base = min(cfg.segment_len, (cfg.max_segment_len + 1) // 2)
        return balanced_boundaries(n, base)

    def query_kv(self, query_ids, query_mask, batch: int):
        """QD: (query ids, mask, the mixer's (k, v, lengths) of the query embeddings), projected
        once per document; None for a plain LCIRC model."""
        m = self.model
        if m.mixer is None:
            if query_ids is not None:
                raise DataError("query_ids given to a model built with query_dependent=False")
            return None
        if query_ids is None:
            raise DataError("this is a QD-LCIRC model (query_dependent=True): pass query_ids")
        q = check_ids(query_ids, "query_ids", m.device, m.config.vocab_size)
        if q.shape[0] not in (1, batch):
            raise DataError(f"query_ids has batch size {q.shape[0]} but the context has {batch}")
        if q.shape[0] != batch:
            q = q.expand(batch, -1)
        query_mask = check_query_mask(query_mask, q)
        k, v = m.mixer.project_memory(m.inputs.embed_tokens(q))
        return q, query_mask, (k, v, query_mask.sum(-1))

    def h0(self, batch: int) -> torch.Tensor:
        """The learned initial state expanded to [B, K, d] (gathered on every call, so ZeRO-3
        ranks gather alike)."""
        return whole(self.model.latents)[0][None].expand(batch, -1, -1)

    # ------------------------------------------------------------------ one step
    def step(self, state, segment_ids, mode, is_h0, query_kv, folds, kvs=None):
        """One recurrence step under a BPTT mode; returns the new state [B, K, d].

        `folds` is the call's `FoldedKV`; `kvs` optionally the segment's precomputed K/V
        (only for steps without a graph).
        """
        m = self.model
        graph = mode != bptt_mod.NONE and torch.is_grad_enabled()
        grad_ctx = contextlib.nullcontext() if graph else torch.no_grad()
        with grad_ctx:
            if mode == bptt_mod.CUT and not is_h0:
                state = state.detach()
            if query_kv is not None:
                k, v, lengths = query_kv
                state = m.mixer(state, k, v, kv_lengths=lengths)
            if kvs is None:
                emb = m.inputs(segment_ids)
                kvs = m.compressor.segment_kv(emb, folds.get(graph))
            if not graph and m.config.cuda_graphs:
                return cuda_graph.graphed_step(m, state, kvs)
            return m.compressor.step(state, kvs)

    # ------------------------------------------------------------------ hoisting
    def hoist_limit(self, batch: int, length: int) -> int:
        """How many segments of `length` tokens one hoisted K/V product may cover."""
        cfg, c = self.model.config, self.model.compressor
        width = c.kv_width + 2 * c.dim                 # K/V + embeds + LN out
        per_segment = batch * length * width * self.model.dtype.itemsize
        return max(1, min(cfg.kv_hoist_max_segments,
                          cfg.kv_hoist_budget_bytes // max(per_segment, 1)))

    def hoisted_kv(self, ids, bounds, graph_free, first, folds) -> dict:
        """K/V of the run of graph-free, equal-length steps starting at `first`, from one product.

        Returns {step: kvs} for up to `hoist_limit` steps; {} when the run has one step (that
        step then projects its own K/V).
        """
        length = bounds[first + 1] - bounds[first]
        limit = self.hoist_limit(ids.shape[0], length)
        last = first + 1
        while (last < len(graph_free) and last - first < limit and graph_free[last]
               and bounds[last + 1] - bounds[last] == length):
            last += 1
        count = last - first
        if count < 2:
            return {}
        with torch.no_grad():
            seg_ids = ids[:, bounds[first]:bounds[last]].reshape(ids.shape[0], count, length)
            emb = self.model.inputs(seg_ids)
            c = self.model.compressor
            out = self.workspace.take(emb.numel() // c.dim * c.kv_width, emb.dtype, emb.device)
            kvs = c.segments_kv(emb, folds.get(False), out=out)
        return {first + j: kv for j, kv in enumerate(kvs)}

    def prune(self, memory: CompressedMemory) -> None:
        """Drop slots that lie wholly outside the memory cap (`CompressedMemory.prune`; the
        memory already does it at every step)."""
        memory.prune()

    # ------------------------------------------------------------------ compress / append
    def compress(self, ids: torch.Tensor, segment_len=None,
                 boundaries: Sequence[int] | None = None, query_ids=None, query_mask=None,
                 bptt=None) -> CompressedMemory:
        """Compress checked token ids [B, N] (see `LCIRCForCausalLM.compress`)."""
        m = self.model
        b, n = ids.shape
        bounds = self.segment_plan(n, segment_len, boundaries)
        policy = bptt_mod.as_policy(bptt)
        num_steps = len(bounds) - 1
        k, cap = m.config.num_latents, m.config.memory_cap
        kept_steps = num_steps if cap is None else min(num_steps, -(-cap // k))
        plan = policy.plan(num_steps, list(range(num_steps - kept_steps, num_steps)))
        qinfo = self.query_kv(query_ids, query_mask, b)
        state = self.h0(b)
        folds = FoldedKV(m.compressor)
        graph_free = [mode == bptt_mod.NONE or not torch.is_grad_enabled() for mode in plan]
        hoisted: dict = {}
        slots = []
        for i in range(num_steps):
            if graph_free[i] and i not in hoisted:
                hoisted = self.hoisted_kv(ids, bounds, graph_free, i, folds)
            state = self.step(state, ids[:, bounds[i]:bounds[i + 1]], plan[i], i == 0,
                              None if qinfo is None else qinfo[2], folds, hoisted.pop(i, None))
            slots.append(state)
        records = []
        if isinstance(policy, bptt_mod.Truncated):
            first = max(0, num_steps - policy.k + 1)
            records = [StreamRecord(ids[:, bounds[i]:bounds[i + 1]],
                                    slots[i - 1].detach() if i else None, i)
                       for i in range(first, num_steps)]
        selected = list(policy.last_selected) if isinstance(policy, bptt_mod.Selective) else None
        return CompressedMemory(slots, state, num_steps,
                                torch.full((b,), n, dtype=torch.long, device=m.device),
                                cap=cap, owner=m,
                                query_ids=None if qinfo is None else qinfo[0],
                                query_mask=None if qinfo is None else qinfo[1], records=records,
                                selected_steps=selected)

    def append(self, memory: CompressedMemory, segment_ids, bptt) -> None:
        """Compress one more segment into `memory`, in place (see `CompressedMemory.append`)."""
        m = self.model
        if not isinstance(memory, CompressedMemory):
            raise TypeError(f"memory must be a CompressedMemory, got {type(memory).__name__}")
        if not memory.uniform:
            raise DataError("cannot append to a stacked memory of different lengths; append to "
                            "each document's memory before stacking")
        if not m.owns(memory):
            raise DataError("memory was made by a different model (config or compressor "
                            "weights differ)")
        ids = check_ids(segment_ids, "segment_ids", m.device, m.config.vocab_size)
        b = memory.batch_size
        if ids.shape[0] != b:
            raise DataError(f"segment_ids has batch size {ids.shape[0]} but the memory has {b}")
        if ids.shape[1] > m.config.max_segment_len:
            raise DataError(f"segment of {ids.shape[1]} tokens is longer than the position table "
                            f"({m.config.max_segment_len} rows)")
        policy = bptt_mod.as_policy(bptt)
        qinfo = None
        if memory.query_ids is not None:
            qinfo = self.query_kv(memory.query_ids, memory.query_mask, b)
        elif m.mixer is not None:
            raise DataError("this QD-LCIRC memory has no query; compress with query_ids first")
        qkv = None if qinfo is None else qinfo[2]
        folds = FoldedKV(m.compressor)
        step = memory.num_segments
        h0 = self.h0(b)
        prev = memory.state if memory.state is not None else h0
        records = window_len = None
        if isinstance(policy, bptt_mod.Truncated):
            # Re-run the last k-1 steps from the detached state entering the window, so that a
            # loss after this step sees exactly a k-step chain.
            window = memory.records[-(policy.k - 1):] if policy.k > 1 else []
            if window and torch.is_grad_enabled():
                first = window[0]
                state = first.input_state if first.input_state is not None else h0
                for j, rec in enumerate(window):
                    state = self.step(state, rec.segment_ids,
                                      bptt_mod.CUT if j == 0 else bptt_mod.CHAIN,
                                      rec.step == 0, qkv, folds)
                    memory.replace_step(rec.step, state)
                prev, mode = state, bptt_mod.CHAIN
            else:
                mode = bptt_mod.CUT
            new = StreamRecord(ids, None if memory.state is None else memory.state.detach(), step)
            records = (window + [new])[-(policy.k - 1):] if policy.k > 1 else []
            window_len = policy.k      # slots older than the window are constants for every later loss
        elif isinstance(policy, bptt_mod.Selective):
            if policy.steps is None:
                raise ConfigError("Selective(n) draws among a known number of steps; when "
                                  "streaming pass Selective(steps=[...]) with global step indices")
            mode = bptt_mod.CUT if step in policy.steps else bptt_mod.NONE
        else:
            mode = bptt_mod.CHAIN
        state = self.step(prev, ids, mode, step == 0, qkv, folds)
        memory.add_step(state, ids.shape[1], records=records, graph_window=window_len)
