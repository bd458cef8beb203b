"""LCIRC / QD-LCIRC around a frozen Hugging Face causal LM of a supported family.

The base model is not copied or re-implemented. `LCIRCForCausalLM` owns the trainable parts
(latents, compressor, GCA blocks, QD mixer) and composes:

* `Recurrence` (`recurrence.py`): compression and streaming, BPTT plans, K/V hoisting;
* `Injection` (`injection.py`): the GCA blocks in forward pre-hooks of the decoder layers, reading
  the memory keys/values that `forward` / `generate` publish for the duration of the call;
* `SegmentInputs` (`inputs.py`): what the compressor reads from the frozen base.

With every gate at 0 the logits equal the base model's exactly. Everything family-specific comes
from the base model's `BaseAdapter` (`base_adapter.py`); the kernels from the op set bound once
(`lcirc_fast.ops.registry`), changed with `configure(backend=...)`.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Sequence

import torch
import torch.nn as nn

from ..backend import resolve_backend
from ..config import LCIRCConfig
from ..errors import CheckpointError, DataError
from ..memory import CompressedMemory
from ..modules import GatedCrossAttentionBlock, PerceiverCompressor, bind_ops
from ..modules.gca import gates_to_1d
from ..modules.linear import PackedLinear
from ..ops.registry import bind
from . import generation, official, pretrained
from .base_adapter import BaseAdapter, resolve_adapter
from .checks import IGNORE_INDEX, check_ids, check_labels, check_like
from .fingerprint import Fingerprint
from .init_recipe import apply_init
from .injection import Injection
from .inputs import SegmentInputs
from .recurrence import Recurrence

WEIGHTS_NAME = pretrained.WEIGHTS_NAME
CONFIG_NAME = pretrained.CONFIG_NAME


class LCIRCForCausalLM(nn.Module):
    """A frozen causal LM plus the trainable LCIRC parts.

    Trainable: `latents` (h0, [K, d]), `compressor`, the GCA blocks in `gca` (keyed by the
    decoder layer they precede), and `mixer` when `config.query_dependent`. How the model runs
    (backend, TF32, K/V hoisting, CUDA graphs) is in `config` too; change it with `configure`.
    """

    def __init__(self, base: nn.Module, config: LCIRCConfig):
        super().__init__()
        self.adapter: BaseAdapter = resolve_adapter(base)
        cfg = config.resolve(base.config)
        self.config = cfg
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        emb = base.get_input_embeddings().weight
        dev, dt = emb.device, emb.dtype
        d = cfg.hidden_size
        self.latents = nn.Parameter(torch.randn(cfg.num_latents, d, device=dev, dtype=dt))
        self.compressor = PerceiverCompressor(d, cfg.compressor_layers, cfg.compressor_heads,
                                              cfg.compressor_head_dim, cfg.compressor_ffn,
                                              cfg.max_segment_len, cfg.norm_eps, dev, dt)
        block = lambda: GatedCrossAttentionBlock(d, cfg.gca_heads, cfg.gca_head_dim,  # noqa: E731
                                                 cfg.gca_ffn, cfg.norm_eps, dev, dt)
        self.gca = nn.ModuleDict({str(i): block() for i in cfg.gca_layers})
        self.mixer = (GatedCrossAttentionBlock(d, cfg.mixer_heads, cfg.mixer_head_dim, cfg.mixer_ffn,
                                               cfg.norm_eps, dev, dt, packed=True)
                      if cfg.query_dependent else None)
        self.uid = uuid.uuid4().hex            # identifies memories made by this object
        self.cache_kwarg = self.adapter.cache_kwarg(base)
        self.injection = Injection(base, self.adapter, self.gca, cfg.gca_heads, cfg.gca_head_dim)
        self.inputs = SegmentInputs(base, self.adapter, cfg, self.injection.paused)
        self.recurrence = Recurrence(self)
        self._fingerprint = Fingerprint(self)
        apply_init(self, cfg.init)
        self.ops = None
        self._bind_ops()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_base(cls, base_model: nn.Module, config: LCIRCConfig | None = None
                  ) -> "LCIRCForCausalLM":
        """Wrap `base_model`, a causal LM of a family in `BASE_ADAPTERS` (ConfigError otherwise);
        its weights are frozen, not copied."""
        return cls(base_model, config or LCIRCConfig())

    def remove_hooks(self) -> None:
        """Detach the GCA hooks from the base model (it then runs exactly as before wrapping)."""
        self.injection.remove_hooks()

    @property
    def device(self) -> torch.device:
        return self.latents.device

    @property
    def dtype(self) -> torch.dtype:
        return self.latents.dtype

    def lcirc_modules(self) -> list[nn.Module]:
        """The trainable modules (compressor, GCA blocks, mixer)."""
        return [m for m in (self.compressor, self.gca, self.mixer) if m is not None]

    @staticmethod
    def is_lcirc_key(name: str) -> bool:
        """True for a parameter or state-dict name of the LCIRC weights, False for the frozen
        base model's (the one place that tells them apart)."""
        return not name.startswith("base.")

    def trainable_parameters(self):
        return [p for n, p in self.named_parameters() if self.is_lcirc_key(n)]

    def lcirc_state_dict(self) -> dict[str, torch.Tensor]:
        """The LCIRC weights alone (no base-model tensors)."""
        return {k: v for k, v in self.state_dict().items() if self.is_lcirc_key(k)}

    # ------------------------------------------------------------------ how it runs
    def configure(self, **runtime) -> "LCIRCForCausalLM":
        """Change runtime settings (`backend`, `allow_tf32`, `kv_hoist_max_segments`,
        `kv_hoist_budget_bytes`, `cuda_graphs`; ConfigError for anything else or a bad value);
        the op set is bound again when the backend or TF32 setting changes. Returns self."""
        self.config = self.config.with_runtime(**runtime)
        if {"backend", "allow_tf32"} & set(runtime):
            self._bind_ops()
        return self

    def _bind_ops(self) -> None:
        """Resolve the backend for the model's device and bind its op set to every module."""
        self.ops = bind(resolve_backend(self.config.backend, self.device),
                        allow_tf32=self.config.allow_tf32)
        for module in self.lcirc_modules():
            bind_ops(module, self.ops)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        if getattr(self, "ops", None) is not None:   # "auto" follows the device
            self._bind_ops()
        return out

    def release_buffers(self) -> None:
        """Free what CPU compression keeps between calls: the K/V products' workspace and the
        packed copies of the latent-step weights (both are rebuilt on the next call)."""
        self.recurrence.workspace.release()
        for module in self.lcirc_modules():
            for sub in module.modules():
                if isinstance(sub, PackedLinear):
                    sub.drop_packed()

    def resolved_backend(self) -> str:
        """The concrete backend the bound op set asked for ("torch", "triton" or "cuda")."""
        return self.ops.backend

    # ------------------------------------------------------------------ memories
    def owns(self, memory: CompressedMemory) -> bool:
        """True when this object made `memory` (even with weights updated since), or when the
        memory's fingerprint equals this model's."""
        return memory.owner_uid == self.uid or memory.fingerprint == self.fingerprint()

    def fingerprint(self) -> str:
        """sha256 of everything a memory depends on (see `Fingerprint`); cached until a weight
        changes."""
        return self._fingerprint()

    def check_memory(self, memory: CompressedMemory, batch: int) -> None:
        """DataError unless `memory` can be read with an input of `batch` rows."""
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

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> exactly what the base model feeds its first decoder layer."""
        return self.inputs.embed_tokens(ids)

    def segment_inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """What the Perceiver reads for segments of token ids int64 [..., L] -> [..., L, d]
        (see `SegmentInputs`)."""
        return self.inputs(ids)

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
        ids = check_ids(context_ids, "context_ids", self.device, self.config.vocab_size)
        return self.recurrence.compress(ids, segment_len, boundaries, query_ids, query_mask, bptt)

    def append(self, memory: CompressedMemory, segment_ids, bptt=None) -> CompressedMemory:
        """Compress one more segment ([B, L] or [L] token ids) into `memory`, in place; returns
        it. Streaming gives the same memory as compressing at once with the same boundaries;
        `bptt` as in `compress` (Selective needs explicit global `steps` when streaming)."""
        self.recurrence.append(memory, segment_ids, bptt)
        return memory

    # ------------------------------------------------------------------ injection
    def memory_kv(self, memory: CompressedMemory, use_cache: bool = True) -> dict:
        """{layer: (k, v)}, k, v [B, M, H, Dh]: the memory projected for every GCA layer with one
        matrix product; outside autograd cached in the memory so decoding projects it once."""
        return self.injection.memory_kv(memory, use_cache=use_cache)

    def project_memory_kv(self, hidden: torch.Tensor) -> dict:
        """hidden [B, M, d] -> {layer: (k, v)}, every GCA layer from one matrix product."""
        return self.injection.project(hidden)

    def inject(self, memory: CompressedMemory | None, batch: int, use_cache: bool = True):
        """A context within which the base model's forward reads `memory` through the GCA
        blocks (checked against `batch` input rows); None: the plain base model."""
        if memory is not None:
            self.check_memory(memory, batch)
        return self.injection.active(memory, use_cache=use_cache)

    def forward(self, input_ids: torch.Tensor, memory: CompressedMemory | None = None,
                attention_mask: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                **kwargs):
        """Logits (and loss when `labels` is given, HF convention: shifted inside, -100 ignored).

        With `memory=None` this is the base model. Every GCA block attends to the whole memory.
        """
        ids = check_ids(input_ids, "input_ids", self.device, self.config.vocab_size, allow_1d=False)
        if attention_mask is not None:
            attention_mask = check_like(attention_mask, ids, "attention_mask")
        if labels is not None:
            labels = check_labels(labels, ids, self.config.vocab_size)
        with self.inject(memory, ids.shape[0]):
            return self.base(input_ids=ids, attention_mask=attention_mask, labels=labels,
                             **kwargs)

    def answer_logits(self, input_ids: torch.Tensor, labels: torch.Tensor,
                      memory: CompressedMemory | None = None,
                      attention_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-token logits where a label is predicted, and those labels.

        input_ids / labels int64 [B, T] (labels: HF convention, -100 where there is no loss).
        Returns (logits float32 [B, K, vocab], gold int64 [B, K]): the K = T - 1 - first
        positions from the first one whose next token is labelled in some row (a QA batch:
        from its earliest answer on), and the labels they predict (-100 included). The
        vocabulary projection runs over those positions only (`logits_to_keep`), so the
        [B, T, vocab] logits are never built; a base model whose forward lacks
        `logits_to_keep` projects every position (then K = T - 1).
        """
        ids = check_ids(input_ids, "input_ids", self.device, self.config.vocab_size, allow_1d=False)
        labels = check_labels(labels, ids, self.config.vocab_size)
        if attention_mask is not None:
            attention_mask = check_like(attention_mask, ids, "attention_mask")
        target = labels[:, 1:]
        predicting = (target != IGNORE_INDEX).any(0).nonzero()
        first = int(predicting[0]) if predicting.numel() else 0
        keep = {}
        if first > 0 and generation.takes_logits_to_keep(self.base):
            keep = {"logits_to_keep": ids.shape[1] - first}
        else:
            first = 0
        with self.inject(memory, ids.shape[0]):
            logits = self.base(input_ids=ids, attention_mask=attention_mask, **keep).logits
        return logits[:, :-1].float(), target[:, first:]

    def loss(self, input_ids: torch.Tensor, labels: torch.Tensor,
             memory: CompressedMemory | None = None,
             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`forward(..., labels=labels).loss` (the mean next-token cross-entropy over the
        labelled positions, 0-dim float32) from `answer_logits`: the vocabulary projection and
        its softmax only where a label is predicted."""
        logits, gold = self.answer_logits(input_ids, labels, memory, attention_mask)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1),
                                           ignore_index=IGNORE_INDEX)

    def generate(self, input_ids, memory: CompressedMemory | None = None, **kwargs):
        """Decode with the self-attention KV cache and memory K/V projected once per layer.

        See `lcirc_fast.models.generation.generate` for the options.
        """
        return generation.generate(self, input_ids, memory=memory, **kwargs)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the LCIRC weights (safetensors) and config JSON; the base model is referenced
        by name (`base_model` in the JSON), never copied."""
        pretrained.save_pretrained(self, directory)

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
        config = pretrained.read_pretrained_config(os.path.join(directory, CONFIG_NAME), base)
        weights_path = os.path.join(directory, WEIGHTS_NAME)
        state = gates_to_1d(pretrained.read_pretrained_weights(weights_path))
        model = cls(base, config)
        pretrained.check_pretrained_state(weights_path, state, model)
        model.load_state_dict({k: v.to(model.device) for k, v in state.items()}, strict=False)
        return model

    def load_official_checkpoint(self, path: str | os.PathLike) -> None:
        """Import the reference implementation's `.pt` checkpoint (see `official`)."""
        official.load_official_checkpoint(self, path)

    def official_state_dict(self) -> dict:
        """Export the weights in the reference implementation's checkpoint layout."""
        return official.export_official_state(self)
