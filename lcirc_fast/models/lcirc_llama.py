"""LCIRC / QD-LCIRC around a frozen Hugging Face causal LM of a supported family.

The base model is not copied or re-implemented: each GCA block runs in a forward pre-hook of the
decoder layer it precedes, reading the memory keys/values that `forward` / `generate` publish
for the duration of the call. With every gate at 0 the logits equal the base model's exactly.
Everything family-specific (layer path, embedding scale, layer-call layout) comes from the base
model's `BaseAdapter` (`lcirc_fast.models.base_adapter`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import uuid
import warnings
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import bptt as bptt_mod
from ..backend import resolve_backend
from ..config import MIXER_SIZES, LCIRCConfig
from ..errors import CheckpointError, ConfigError, DataError
from ..memory import CompressedMemory, _Record, content_checksum
from ..modules import GatedCrossAttentionBlock, PerceiverCompressor
from ..modules.gca import gates_to_1d, is_gate
from ..modules.zero import whole
from ..segmenting import balanced_boundaries, check_boundaries, fixed_boundaries
from . import cuda_graph, generation, official
from .base_adapter import BaseAdapter, resolve_adapter

WEIGHTS_NAME = "lcirc_model.safetensors"
CONFIG_NAME = "lcirc_config.json"
MODEL_FORMAT = "lcirc_fast.model"
MODEL_FORMAT_VERSION = "2"      # 2: sha256 checksum of the weights in the metadata


class _StopForward(Exception):
    """Raised by a forward hook to end a base-model pass early."""


class _FoldedKV:
    """The compressor's folded K/V weight, computed at most once per graph mode per call.

    Steps with a graph share one autograd-tracked fold (so their graphs meet there: run one
    backward per compress/append call, or pass retain_graph=True); steps without one use a
    detached copy.
    """

    def __init__(self, compressor: PerceiverCompressor):
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


class LCIRCForCausalLM(nn.Module):
    """A frozen causal LM plus the trainable LCIRC parts.

    Trainable: `latents` (h0, [K, d]), `compressor`, the GCA blocks in `gca` (keyed by the
    decoder layer they precede), and `mixer` when `config.query_dependent`.

    `kv_hoist_max_segments` / `kv_hoist_budget_bytes` bound how many consecutive graph-free
    compression steps share one K/V product (1 disables the batching); instance-settable. The
    budget counts the chunk's embeddings, normalised embeddings and K/V at the model's dtype.
    `cuda_graphs = True` replays graph-free compressor steps from captured CUDA graphs (CUDA
    only; see `lcirc_fast.models.cuda_graph`).
    """

    cuda_graphs: bool = False
    kv_hoist_max_segments: int = 16
    kv_hoist_budget_bytes: int = 256 << 20

    def __init__(self, base: nn.Module, config: LCIRCConfig):
        super().__init__()
        self.adapter: BaseAdapter = resolve_adapter(base)
        layers = self.adapter.decoder_layers(base)
        cfg = config.resolve(base.config)
        self.config = cfg
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        emb = base.get_input_embeddings().weight
        dev, dt = emb.device, emb.dtype
        self._embed_rms_cache: tuple | None = None
        d = cfg.hidden_size
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, d, device=dev, dtype=dt))
        self.compressor = PerceiverCompressor(d, cfg.compressor_layers, cfg.compressor_heads,
                                              cfg.compressor_head_dim, cfg.compressor_ffn,
                                              cfg.max_segment_len, cfg.norm_eps, dev, dt)
        block = lambda: GatedCrossAttentionBlock(d, cfg.gca_heads, cfg.gca_head_dim,  # noqa: E731
                                                 cfg.gca_ffn, cfg.norm_eps, dev, dt)
        self.gca = nn.ModuleDict({str(i): block() for i in cfg.gca_layers})
        self.mixer = (GatedCrossAttentionBlock(d, cfg.mixer_heads, cfg.mixer_head_dim, cfg.mixer_ffn,
                                               cfg.norm_eps, dev, dt)
                      if cfg.query_dependent else None)
        self.backend = cfg.backend
        self._injection: dict | None = None
        self._fingerprint_cache: tuple | None = None
        self.uid = uuid.uuid4().hex            # identifies memories made by this object
        self._cache_kwarg = self.adapter.cache_kwarg(base)
        self._hooks = [layers[i].register_forward_pre_hook(self._make_hook(str(i)),
                                                           with_kwargs=True)
                       for i in cfg.gca_layers]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_base(cls, base_model: nn.Module, config: LCIRCConfig | None = None
                  ) -> "LCIRCForCausalLM":
        """Wrap `base_model`, a causal LM of a family in `BASE_ADAPTERS` (ConfigError otherwise);
        its weights are frozen, not copied."""
        return cls(base_model, config or LCIRCConfig())

    def remove_hooks(self) -> None:
        """Detach the GCA hooks from the base model (it then runs exactly as before wrapping)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @property
    def device(self) -> torch.device:
        return self.latents.device

    @property
    def dtype(self) -> torch.dtype:
        return self.latents.dtype

    def resolved_backend(self) -> str:
        return resolve_backend(self.backend, self.device)

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("base.")]

    def lcirc_state_dict(self) -> dict[str, torch.Tensor]:
        """The LCIRC weights alone (no base-model tensors)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base.")}

    # ------------------------------------------------------------------ input checks
    def _check_ids(self, ids: torch.Tensor, what: str, allow_1d: bool = True) -> torch.Tensor:
        """Token ids as int64 [B, L]: a tensor of integers on the model's device, B >= 1,
        L >= 1, every id in the vocabulary. A 1-D tensor is one row when `allow_1d`."""
        if not isinstance(ids, torch.Tensor):
            raise DataError(f"{what} must be a torch.Tensor of token ids, got "
                            f"{type(ids).__name__}")
        if ids.dtype == torch.bool or ids.is_floating_point() or ids.is_complex():
            raise DataError(f"{what} must hold integer token ids (int64), got {ids.dtype}; "
                            f"convert with .long()")
        if ids.device != self.device:
            raise DataError(f"{what} is on {ids.device} but the model is on {self.device}")
        if ids.dim() == 1 and allow_1d:
            ids = ids[None]
        if ids.dim() != 2:
            hint = "; for one sequence pass ids[None]" if ids.dim() == 1 else ""
            raise DataError(f"{what} must be [batch, length], got shape {tuple(ids.shape)}{hint}")
        if ids.shape[0] == 0:
            raise DataError(f"{what} has an empty batch (shape {tuple(ids.shape)}); pass at "
                            f"least one row")
        if ids.shape[1] == 0:
            raise DataError(f"{what} is empty (length 0)")
        v = self.config.vocab_size
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= v:
            raise DataError(f"{what} holds token id {lo if lo < 0 else hi} outside the "
                            f"vocabulary [0, {v})")
        return ids.long()

    @staticmethod
    def _check_like(t, ids: torch.Tensor, what: str) -> torch.Tensor:
        """A tensor (mask or labels) with the shape of `ids`, on its device."""
        if not isinstance(t, torch.Tensor):
            raise DataError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
        if t.shape != ids.shape:
            raise DataError(f"{what} shape {tuple(t.shape)} does not match input_ids "
                            f"{tuple(ids.shape)}")
        return t.to(ids.device)

    def _check_memory(self, memory: CompressedMemory, batch: int) -> None:
        if not isinstance(memory, CompressedMemory):
            raise TypeError(f"memory must be a CompressedMemory, got {type(memory).__name__}")
        if not self.owns(memory):
            raise DataError("memory was made by a different model (config or compressor "
                            "weights differ); compress the context with this model")
        if memory.batch_size not in (1, batch):
            raise DataError(f"memory has batch size {memory.batch_size} but the input has "
                            f"batch size {batch}")
        if memory.device != self.device:
            raise DataError(f"memory is on {memory.device} but the model is on {self.device}")
        if memory.dtype != self.dtype:
            raise DataError(f"memory has dtype {memory.dtype} but the model has {self.dtype}")

    # ------------------------------------------------------------------ fingerprint
    def owns(self, memory: CompressedMemory) -> bool:
        """True when this object made `memory` (even with weights updated since), or when the
        memory's fingerprint equals this model's."""
        return memory.owner_uid == self.uid or memory.fingerprint == self.fingerprint()

    def _fingerprint_params(self):
        params = [("latents", self.latents)]
        params += [("compressor." + n, p) for n, p in self.compressor.named_parameters()]
        if self.mixer is not None:
            params += [("mixer." + n, p) for n, p in self.mixer.named_parameters()]
        params.append(("embed", self.base.get_input_embeddings().weight))
        layers = self.adapter.decoder_layers(self.base)
        for i in range(self.config.compressor_input_layers):   # contextual input depends on them
            params += [(f"base.layers.{i}." + n, p) for n, p in layers[i].named_parameters()]
        return params

    def fingerprint(self) -> str:
        """sha256 of the compressor-relevant config and of every tensor a memory depends on
        (latents, compressor, mixer, token embeddings and their scale, and the first
        `compressor_input_layers` decoder layers). Cached until a weight changes."""
        params = self._fingerprint_params()
        key = tuple((id(p), p._version) for _, p in params)
        if self._fingerprint_cache is not None and self._fingerprint_cache[0] == key:
            return self._fingerprint_cache[1]
        h = hashlib.sha256(json.dumps(self.config.compressor_signature(),
                                      sort_keys=True).encode())
        scale = self.adapter.input_scale(self.base.config)
        if scale != 1.0:                  # absent at 1, so unscaled families keep their prints
            h.update(f"embed_scale:{scale!r}".encode())
        for name, p in params:
            t = p.detach().contiguous().cpu()
            if is_gate(name):
                t = t.reshape(())      # hashed as the 0-dim gates of earlier versions
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"")
        fp = h.hexdigest()
        self._fingerprint_cache = (key, fp)
        return fp

    # ------------------------------------------------------------------ compression
    def _segment_plan(self, n: int, segment_len, boundaries) -> list[int]:
        cfg = self.config
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

    def _query_kv(self, query_ids, query_mask, batch):
        """QD: the mixer's keys/values of the query embeddings (projected once per document)."""
        if self.mixer is None:
            if query_ids is not None:
                raise DataError("query_ids given to a model built with query_dependent=False")
            return None
        if query_ids is None:
            raise DataError("this is a QD-LCIRC model (query_dependent=True): pass query_ids")
        q = self._check_ids(query_ids, "query_ids")
        if q.shape[0] not in (1, batch):
            raise DataError(f"query_ids has batch size {q.shape[0]} but the context has {batch}")
        if q.shape[0] != batch:
            q = q.expand(batch, -1)
        if query_mask is None:
            query_mask = torch.ones_like(q, dtype=torch.bool)
        else:
            if not isinstance(query_mask, torch.Tensor):
                raise DataError(f"query_mask must be a torch.Tensor, got "
                                f"{type(query_mask).__name__}")
            if query_mask.shape[-1] != q.shape[1]:
                raise DataError(f"query_mask shape {tuple(query_mask.shape)} does not match "
                                f"query_ids {tuple(q.shape)}")
            query_mask = query_mask.to(self.device).bool().expand_as(q)
            if not bool(query_mask.any(-1).all()):
                raise DataError("query_mask masks out every query token of some item")
            if not bool((query_mask.long().cummin(-1).values == query_mask.long()).all()):
                raise DataError("query_mask must be right-padded (ones, then zeros)")
        k, v = self.mixer.project_memory(self.embed_tokens(q))
        return q, query_mask, (k, v, query_mask.sum(-1))

    def _step(self, state, segment_ids, mode, is_h0, query_kv, backend, folds, kvs=None):
        """One recurrence step under a BPTT mode; returns the new state [B, K, d].

        `folds` is the call's `_FoldedKV`; `kvs` optionally the segment's precomputed K/V
        (only for steps without a graph).
        """
        graph = mode != bptt_mod.NONE and torch.is_grad_enabled()
        grad_ctx = contextlib.nullcontext() if graph else torch.no_grad()
        with grad_ctx:
            if mode == bptt_mod.CUT and not is_h0:
                state = state.detach()
            if query_kv is not None:
                k, v, lengths = query_kv
                state = self.mixer(state, k, v, kv_lengths=lengths, backend=backend)
            if kvs is None:
                emb = self.segment_inputs(segment_ids)
                kvs = self.compressor.segment_kv(emb, folds.get(graph), backend=backend)
            if not graph and cuda_graph.enabled(self):
                return cuda_graph.graphed_step(self, state, kvs, backend)
            return self.compressor.step(state, kvs, backend=backend)

    def _embed_rms(self, weight: torch.Tensor) -> float:
        """Mean row RMS of the embedded table, i.e. of the table times the family's input scale
        (the contextual input's scale), cached."""
        key = (id(weight), weight._version)
        if self._embed_rms_cache is None or self._embed_rms_cache[0] != key:
            rms = float(weight.detach().float().pow(2).mean(-1).sqrt().mean())
            rms *= abs(self.adapter.input_scale(self.base.config))
            self._embed_rms_cache = (key, rms)
        return self._embed_rms_cache[1]

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> exactly what the base model feeds its first decoder layer (the family's
        embedding scale included)."""
        return self.adapter.embed(self.base, ids)

    def segment_inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """What the Perceiver reads for segments of token ids int64 [..., L] -> [..., L, d].

        `config.compressor_input_layers` = 0: the frozen token embeddings as the base model's
        first layer receives them (`embed_tokens`; the paper). k > 0: the frozen LLM's hidden
        states after its first k decoder layers, each segment run alone (positions from 0, no
        memory, no gradient), RMS-normalised per token and scaled to the mean row RMS of the
        embedded table (the table times the family's input scale); in the base model's dtype.
        """
        emb = self.base.get_input_embeddings()
        k = self.config.compressor_input_layers
        if k == 0:
            return self.embed_tokens(ids)
        flat = ids.reshape(-1, ids.shape[-1])
        seen: dict = {}

        def grab(_module, _args, out):
            seen["h"] = out[0] if isinstance(out, tuple) else out
            raise _StopForward

        handle = self.adapter.decoder_layers(self.base)[k - 1].register_forward_hook(grab)
        injection, self._injection = self._injection, None   # no GCA inside this pass
        try:
            with torch.no_grad():
                try:
                    self.adapter.decoder_stack(self.base)(input_ids=flat, use_cache=False)
                except _StopForward:
                    pass
        finally:
            handle.remove()
            self._injection = injection
        h = seen["h"].float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.config.norm_eps) * self._embed_rms(emb.weight)
        return h.to(emb.weight.dtype).reshape(*ids.shape, -1)

    def _hoist_limit(self, batch: int, length: int) -> int:
        """How many segments of `length` tokens one hoisted K/V product may cover."""
        most, budget = self.kv_hoist_max_segments, self.kv_hoist_budget_bytes
        if isinstance(most, bool) or not isinstance(most, int) or most < 1:
            raise ConfigError(f"kv_hoist_max_segments must be an int >= 1, got {most!r}")
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
            raise ConfigError(f"kv_hoist_budget_bytes must be an int >= 0, got {budget!r}")
        c = self.compressor
        width = len(c.layers) * 2 * c.heads * c.head_dim + 2 * c.dim   # K/V + embeds + LN out
        per_segment = batch * length * width * self.dtype.itemsize
        return max(1, min(most, budget // max(per_segment, 1)))

    def _hoisted_kv(self, ids, bounds, graph_free, first, folds, backend) -> dict:
        """K/V of the run of graph-free, equal-length steps starting at `first`, from one product.

        Returns {step: kvs} for up to `_hoist_limit` steps; {} when the run has one step (that
        step then projects its own K/V).
        """
        length = bounds[first + 1] - bounds[first]
        limit = self._hoist_limit(ids.shape[0], length)
        last = first + 1
        while (last < len(graph_free) and last - first < limit and graph_free[last]
               and bounds[last + 1] - bounds[last] == length):
            last += 1
        count = last - first
        if count < 2:
            return {}
        with torch.no_grad():
            seg_ids = ids[:, bounds[first]:bounds[last]].reshape(ids.shape[0], count, length)
            emb = self.segment_inputs(seg_ids)
            kvs = self.compressor.segments_kv(emb, folds.get(False), backend=backend)
        return {first + j: kv for j, kv in enumerate(kvs)}

    def _prune(self, memory: CompressedMemory) -> None:
        """Drop slots that lie wholly outside the memory cap."""
        cap = memory.cap
        if cap is None:
            return
        k = self.config.num_latents
        while len(memory.slots) > 1 and (len(memory.slots) - 1) * k >= cap:
            memory.slots.pop(0)

    def compress(self, context_ids, segment_len: int | None = None,
                 boundaries: Sequence[int] | None = None, query_ids=None, query_mask=None,
                 bptt=None) -> CompressedMemory:
        """Compress a context into a memory: h(i) = Perceiver(h(i-1), Embed(s_i) + P).

        Args:
            context_ids: int64 [B, N] (or [N]); a list of 1-D tensors of different lengths is
                compressed item by item and stacked (padded memory, masked by `lengths`).
            segment_len: fixed segment length; default: the balanced ~`config.segment_len` rule.
            boundaries: explicit boundaries [0, b1, ..., N] shared by the batch.
            query_ids, query_mask: [B, Tq] QD query tokens (required iff query_dependent).
            bptt: a `lcirc_fast.bptt` policy (default Full()); ignored under torch.no_grad().
        Returns:
            CompressedMemory with S*K vectors per item (newest `memory_cap` kept).

        Consecutive steps that run without a graph (plan "none", or everything under no_grad)
        and have equal segment lengths get their K/V from one product over up to
        `kv_hoist_max_segments` segments (within `kv_hoist_budget_bytes`); steps with a graph
        project their own K/V inside their autograd scope. The folded K/V weight is computed
        once per call and shared by the steps with a graph, so run one backward per call (or
        pass retain_graph=True).
        """
        if isinstance(context_ids, (list, tuple)):
            if not context_ids:
                raise DataError("context_ids is an empty list")
            if query_ids is not None and len(query_ids) != len(context_ids):
                raise DataError("pass one query per context")
            for i, c in enumerate(context_ids):
                if not isinstance(c, torch.Tensor):
                    raise DataError(f"context_ids[{i}] must be a torch.Tensor of token ids (a "
                                    f"list holds one context per item), got {type(c).__name__}")
            mems = [self.compress(c, segment_len, boundaries,
                                  None if query_ids is None else query_ids[i],
                                  None if query_mask is None else query_mask[i], bptt)
                    for i, c in enumerate(context_ids)]
            return CompressedMemory.stack(mems)
        ids = self._check_ids(context_ids, "context_ids")
        b, n = ids.shape
        bounds = self._segment_plan(n, segment_len, boundaries)
        policy = bptt_mod.as_policy(bptt)
        num_steps = len(bounds) - 1
        k = self.config.num_latents
        cap = self.config.memory_cap
        kept_steps = num_steps if cap is None else min(num_steps, -(-cap // k))
        plan = policy.plan(num_steps, list(range(num_steps - kept_steps, num_steps)))
        qinfo = self._query_kv(query_ids, query_mask, b)
        backend = self.resolved_backend()
        state = whole(self.latents)[0][None].expand(b, -1, -1)
        folds = _FoldedKV(self.compressor)
        graph_free = [mode == bptt_mod.NONE or not torch.is_grad_enabled() for mode in plan]
        hoisted: dict = {}
        slots = []
        for i in range(num_steps):
            if graph_free[i] and i not in hoisted:
                hoisted = self._hoisted_kv(ids, bounds, graph_free, i, folds, backend)
            state = self._step(state, ids[:, bounds[i]:bounds[i + 1]], plan[i], i == 0,
                               None if qinfo is None else qinfo[2], backend, folds,
                               hoisted.pop(i, None))
            slots.append(state)
        mem = CompressedMemory(slots, state, num_steps,
                               torch.full((b,), n, dtype=torch.long, device=self.device),
                               cap=cap, owner=self,
                               query_ids=None if qinfo is None else qinfo[0],
                               query_mask=None if qinfo is None else qinfo[1])
        if isinstance(policy, bptt_mod.Selective):
            mem.selected_steps = list(policy.last_selected)
        if isinstance(policy, bptt_mod.Truncated):
            first = max(0, num_steps - policy.k + 1)
            mem._records = [_Record(ids[:, bounds[i]:bounds[i + 1]],
                                    slots[i - 1].detach() if i else None, i)
                            for i in range(first, num_steps)]
        self._prune(mem)
        return mem

    def _append(self, memory: CompressedMemory, segment_ids, bptt) -> None:
        if not memory.uniform:
            raise DataError("cannot append to a stacked memory of different lengths; append to "
                            "each document's memory before stacking")
        if not self.owns(memory):
            raise DataError("memory was made by a different model (config or compressor "
                            "weights differ)")
        ids = self._check_ids(segment_ids, "segment_ids")
        b = memory.batch_size
        if ids.shape[0] != b:
            raise DataError(f"segment_ids has batch size {ids.shape[0]} but the memory has {b}")
        if ids.shape[1] > self.config.max_segment_len:
            raise DataError(f"segment of {ids.shape[1]} tokens is longer than the position table "
                            f"({self.config.max_segment_len} rows)")
        policy = bptt_mod.as_policy(bptt)
        qinfo = None
        if memory.query_ids is not None:
            qinfo = self._query_kv(memory.query_ids, memory.query_mask, b)
        elif self.mixer is not None:
            raise DataError("this QD-LCIRC memory has no query; compress with query_ids first")
        qkv = None if qinfo is None else qinfo[2]
        backend = self.resolved_backend()
        folds = _FoldedKV(self.compressor)
        step = memory.num_segments
        h0 = whole(self.latents)[0][None].expand(b, -1, -1)   # on every call: ZeRO-3 ranks gather alike
        prev = memory.state if memory.state is not None else h0
        if isinstance(policy, bptt_mod.Truncated):
            # Re-run the last k-1 steps from the detached state entering the window, so that a
            # loss after this step sees exactly a k-step chain.
            window = memory._records[-(policy.k - 1):] if policy.k > 1 else []
            if window and torch.is_grad_enabled():
                first = window[0]
                state = first.input_state if first.input_state is not None else h0
                for j, rec in enumerate(window):
                    state = self._step(state, rec.segment_ids,
                                       bptt_mod.CUT if j == 0 else bptt_mod.CHAIN,
                                       rec.step == 0, qkv, backend, folds)
                    pos = len(memory.slots) - (step - rec.step)
                    if 0 <= pos < len(memory.slots):
                        memory.slots[pos] = state
                prev, mode = state, bptt_mod.CHAIN
            else:
                mode = bptt_mod.CUT
            new = _Record(ids, None if memory.state is None else memory.state.detach(), step)
            memory._records = (window + [new])[-(policy.k - 1):] if policy.k > 1 else []
        elif isinstance(policy, bptt_mod.Selective):
            if policy.steps is None:
                raise ConfigError("Selective(n) draws among a known number of steps; when "
                                  "streaming pass Selective(steps=[...]) with global step indices")
            mode = bptt_mod.CUT if step in policy.steps else bptt_mod.NONE
        else:
            mode = bptt_mod.CHAIN
        state = self._step(prev, ids, mode, step == 0, qkv, backend, folds)
        memory.slots.append(state)
        if isinstance(policy, bptt_mod.Truncated):
            # slots older than the window are constants for every later loss
            for j in range(max(0, len(memory.slots) - policy.k)):
                memory.slots[j] = memory.slots[j].detach()
        memory.state = state
        memory.num_segments += 1
        memory.context_tokens = memory.context_tokens + ids.shape[1]
        memory.invalidate_cache()
        self._prune(memory)

    # ------------------------------------------------------------------ injection
    def memory_kv(self, memory: CompressedMemory, use_cache: bool = True) -> dict:
        """Project the memory to every GCA layer's keys/values with one matrix product.

        Returns {layer: (k, v)} with k, v [B, M, H, Dh]. Outside autograd the result is cached
        in the memory (keyed by the memory tensor and the GCA weights' versions) so decoding
        projects it once.
        """
        blocks = list(self.gca.items())
        hidden = memory.hidden
        key = (id(hidden), hidden._version) + tuple(
            (id(b.attn.to_kv.weight), b.attn.to_kv.weight._version) for _, b in blocks)
        cacheable = use_cache and not torch.is_grad_enabled()
        if cacheable and memory._kv_cache.get("key") == key:
            return memory._kv_cache["kv"]
        out = self.project_memory_kv(hidden)
        if cacheable:
            memory._kv_cache = {"key": key, "kv": out}
        return out

    def project_memory_kv(self, hidden: torch.Tensor) -> dict:
        """hidden [B, M, d] -> {layer: (k, v)}, every GCA layer from one matrix product."""
        blocks = list(self.gca.items())
        w = torch.cat(whole(*(b.attn.to_kv.weight for _, b in blocks)), 0)
        bsz, m, _ = hidden.shape
        heads, hd = self.config.gca_heads, self.config.gca_head_dim
        kv = F.linear(hidden, w).view(bsz, m, len(blocks), 2, heads, hd)
        return {name: (kv[:, :, j, 0], kv[:, :, j, 1]) for j, (name, _) in enumerate(blocks)}

    def _make_hook(self, name: str):
        adapter = self.adapter

        def hook(module, args, kwargs):
            inj = self._injection
            if inj is None:
                return None
            x = adapter.hidden_states(args, kwargs)
            k, v = inj["kv"][name]
            b = x.shape[0]
            if k.shape[0] != b:
                k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
            lengths = inj["lengths"]
            if lengths is not None and lengths.shape[0] != b:
                lengths = lengths.expand(b)
            x = self.gca[name](x, k, v, kv_lengths=lengths, backend=inj["backend"])
            return adapter.with_hidden_states(args, kwargs, x)
        return hook

    @contextlib.contextmanager
    def inject(self, memory: CompressedMemory | None, batch: int, use_cache: bool = True):
        """Within this context the base model's forward reads `memory` through the GCA blocks."""
        if memory is None:
            yield
            return
        self._check_memory(memory, batch)
        kv = self.memory_kv(memory, use_cache=use_cache)
        lengths = None if memory.uniform else memory.lengths
        prev = self._injection
        self._injection = {"kv": kv, "lengths": lengths, "backend": self.resolved_backend()}
        try:
            yield
        finally:
            self._injection = prev

    def forward(self, input_ids: torch.Tensor, memory: CompressedMemory | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs):
        """Logits (and loss when `labels` is given, HF convention: shifted inside, -100 ignored).

        With `memory=None` this is the base model. Every GCA block attends to the whole memory.
        """
        ids = self._check_ids(input_ids, "input_ids", allow_1d=False)
        if attention_mask is not None:
            attention_mask = self._check_like(attention_mask, ids, "attention_mask")
        if labels is not None:
            labels = self._check_like(labels, ids, "labels")
        with self.inject(memory, ids.shape[0]):
            return self.base(input_ids=ids, attention_mask=attention_mask, labels=labels,
                             **kwargs)

    def generate(self, input_ids, memory: CompressedMemory | None = None, **kwargs):
        """Decode with the self-attention KV cache and memory K/V projected once per layer.

        See `lcirc_fast.models.generation.generate` for the options.
        """
        return generation.generate(self, input_ids, memory=memory, **kwargs)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the LCIRC weights (safetensors) and config JSON; the base model is referenced
        by name (`base_model` in the JSON), never copied."""
        from safetensors.torch import save_file

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        state = {k: v.detach().to("cpu", copy=True).contiguous()
                 for k, v in self.lcirc_state_dict().items()}
        meta = {"format": MODEL_FORMAT, "version": MODEL_FORMAT_VERSION}
        meta["checksum"] = content_checksum(meta, state)
        tmp = os.path.join(directory, WEIGHTS_NAME + ".tmp")
        save_file(state, tmp, metadata=meta)
        os.replace(tmp, os.path.join(directory, WEIGHTS_NAME))
        info = {"lcirc_config": self.config.to_dict(),
                "base_model": getattr(self.base.config, "_name_or_path", "") or
                self.base.config.model_type,
                "base_hidden_size": self.config.hidden_size,
                "base_num_hidden_layers": self.config.num_hidden_layers,
                "base_vocab_size": self.config.vocab_size}
        tmp = os.path.join(directory, CONFIG_NAME + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, sort_keys=True)
        os.replace(tmp, os.path.join(directory, CONFIG_NAME))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, base: nn.Module
                        ) -> "LCIRCForCausalLM":
        """Rebuild a model saved by `save_pretrained` around `base`.

        Raises CheckpointError naming the file when the directory, its config JSON or its
        weights are missing, corrupt, or made for another base model.
        """
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise CheckpointError(f"no LCIRC model directory at {directory}; pass a directory "
                                  f"written by save_pretrained (training's best/ or final/)")
        config = _read_pretrained_config(os.path.join(directory, CONFIG_NAME), base)
        weights_path = os.path.join(directory, WEIGHTS_NAME)
        state = gates_to_1d(read_pretrained_weights(weights_path))
        model = cls(base, config)
        _check_pretrained_state(weights_path, state, model)
        model.load_state_dict({k: v.to(model.device) for k, v in state.items()}, strict=False)
        return model

    def load_official_checkpoint(self, path: str | os.PathLike) -> None:
        """Import the reference implementation's `.pt` checkpoint (see `official`)."""
        official.load_official_checkpoint(self, path)

    def official_state_dict(self) -> dict:
        """Export the weights in the reference implementation's checkpoint layout."""
        return official.export_official_state(self)


# ---------------------------------------------------------------------- save_pretrained files
_RESAVE = "save the model again with save_pretrained, or restore the directory from a copy"


def _read_pretrained_config(path: str, base: nn.Module) -> LCIRCConfig:
    """The LCIRCConfig in a save_pretrained config file, checked against `base`."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no {CONFIG_NAME} at {path}; the directory was not written by "
                              f"save_pretrained or is incomplete: {_RESAVE}")
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is corrupt: "
                              f"{_RESAVE}") from None
    if not isinstance(info, dict) or not isinstance(info.get("lcirc_config"), dict):
        raise CheckpointError(f"{path} has no 'lcirc_config' object; it is not an LCIRC "
                              f"config file: {_RESAVE}")
    fields = dict(info["lcirc_config"])
    try:
        config = LCIRCConfig.from_dict(fields)
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from None
    for field in ("hidden_size", "num_hidden_layers", "vocab_size"):
        saved, given = getattr(config, field), getattr(base.config, field)
        if saved != given:
            raise CheckpointError(f"{path} was saved for a base model with {field}={saved}, but "
                                  f"the given base has {given}; load it with the base model it "
                                  f"was trained on ({info.get('base_model', 'unknown')!r})")
    if config.query_dependent and not any(k in fields for k in MIXER_SIZES):
        # saved before the mixer had sizes of its own: it was built like a GCA block
        gca = config.resolve(base.config)
        config = dataclasses.replace(config, mixer_heads=gca.gca_heads,
                                     mixer_head_dim=gca.gca_head_dim, mixer_ffn=gca.gca_ffn)
    return config


def read_pretrained_weights(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a save_pretrained weights file (CPU)."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"no {WEIGHTS_NAME} at {path}; the directory is incomplete: "
                              f"{_RESAVE}")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path} cannot be read as safetensors ({e}); the file is "
                              f"truncated or corrupt: {_RESAVE}") from None
    if meta.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path} is not an lcirc_fast model file (metadata format="
                              f"{meta.get('format')!r}): {_RESAVE}")
    _check_weights_version(path, meta, state)
    return state


def _check_weights_version(path: str, meta: dict[str, str], state: dict) -> None:
    """Version 2 files must match their checksum; version 1 files (no checksum) are read with
    a warning."""
    version = meta.get("version")
    if version == "1":
        warnings.warn(f"{path} has no checksum (model format version 1), so corruption cannot "
                      f"be detected; save the model again to add one", stacklevel=4)
        return
    if version != MODEL_FORMAT_VERSION:
        raise CheckpointError(f"{path} has model format version {version!r}; this lcirc_fast "
                              f"reads versions 1 and {MODEL_FORMAT_VERSION}")
    if "checksum" not in meta:
        raise CheckpointError(f"{path} lacks its checksum; the file is incomplete: {_RESAVE}")
    if content_checksum(meta, state) != meta["checksum"]:
        raise CheckpointError(f"{path} fails its checksum: its content changed after it was "
                              f"written (a corrupt copy or an edit); {_RESAVE}")


def _check_pretrained_state(path: str, state: dict[str, torch.Tensor], model) -> None:
    """Names, shapes and finiteness of the saved tensors against `model`."""
    own = model.lcirc_state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match its config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}; {_RESAVE}")
    for name, t in state.items():
        if t.shape != own[name].shape:
            raise CheckpointError(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, the "
                                  f"config needs {tuple(own[name].shape)}; {_RESAVE}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: tensor {name!r} holds NaN or Inf (training "
                                  f"diverged, or the file is corrupt); use an earlier checkpoint")
