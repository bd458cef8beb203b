"""Analytic FLOP and memory-traffic model of LCIRC and of the full-attention baseline.

Pure arithmetic over model dimensions (an `LLMShape` and a resolved `LCIRCConfig`); nothing
here runs a model.

Conventions:
    * A matmul of [n, a] x [a, b] costs 2·n·a·b FLOPs (multiply + add). ``Cost.matmul`` holds
      exactly these (linear layers and the two attention products Q·Kᵀ and P·V), which is what
      ``torch.utils.flop_counter.FlopCounterMode`` counts.
    * ``Cost.other`` is an estimate of the element-wise work (norms, softmax, activations,
      residuals, RoPE): LayerNorm 8, RMSNorm 4, softmax 5 per logit, SiLU·mul 5, residual 1,
      gated residual 2, RoPE 6 FLOPs per element.
    * ``Cost.bytes`` is a streaming memory-traffic estimate: every weight read once per call,
      every matmul reads its input and writes its output, attention is FlashAttention-style
      (reads Q, K, V, writes O; the score matrix never reaches memory).
    * Causal self-attention is counted either as the ``"half"`` matrix (only the unmasked
      query/key pairs, T·P + T(T+1)/2 of them, as FlashAttention computes) or the ``"full"``
      T·(P+T) matrix (what a dense kernel and the FLOP counter see).
    * Backward (training): trainable linear layers 2× their forward (input and weight
      gradients), frozen LLM linear layers 1× (input gradient only), attention products 2.5×
      (FlashAttention's backward recomputes Q·Kᵀ; torch's counter uses the same rule),
      element-wise work 1×. ``Cost.attn`` is the attention-product part of ``Cost.matmul``.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from . import bptt
from .config import LCIRCConfig
from .segmenting import balanced_lengths

CAUSAL_CONVENTIONS = ("half", "full")

LN_FLOPS, RMS_FLOPS, SOFTMAX_FLOPS, SILU_MUL_FLOPS, ROPE_FLOPS = 8, 4, 5, 5, 6


# ---------------------------------------------------------------------------------------- cost
@dataclass(frozen=True)
class Cost:
    """FLOPs split into matmul / element-wise, plus bytes moved."""

    matmul: float = 0.0
    other: float = 0.0
    bytes: float = 0.0
    attn: float = 0.0

    @property
    def flops(self) -> float:
        return self.matmul + self.other

    def __add__(self, o: "Cost") -> "Cost":
        return Cost(self.matmul + o.matmul, self.other + o.other, self.bytes + o.bytes,
                    self.attn + o.attn)

    def __mul__(self, k: float) -> "Cost":
        return Cost(self.matmul * k, self.other * k, self.bytes * k, self.attn * k)

    __rmul__ = __mul__

    def to_dict(self) -> dict[str, float]:
        return {"matmul": self.matmul, "attn": self.attn, "other": self.other,
                "flops": self.flops, "bytes": self.bytes}


ZERO = Cost()


def total(costs: Iterable[Cost]) -> Cost:
    out = ZERO
    for c in costs:
        out = out + c
    return out


# ---------------------------------------------------------------------------------- shapes
def _pos_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


@dataclass(frozen=True)
class LLMShape:
    """Dimensions of a Llama-style decoder-only LM."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool = False
    name: str = "custom"

    def __post_init__(self):
        for f in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                  "intermediate_size", "vocab_size"):
            _pos_int(f"LLMShape.{f}", getattr(self, f))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"LLMShape.num_heads={self.num_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")

    @classmethod
    def from_hf_config(cls, cfg: Any, name: str = "custom") -> "LLMShape":
        """From a Hugging Face LlamaConfig-like object or a config.json dict."""
        get = (lambda k, d=None: cfg.get(k, d)) if isinstance(cfg, dict) else \
            (lambda k, d=None: getattr(cfg, k, d))
        missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size", "vocab_size") if get(k) is None]
        if missing:
            raise ValueError(f"model config lacks {missing} (need a Llama-style config)")
        bad = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size", "vocab_size", "num_key_value_heads", "head_dim")
               if get(k) is not None and (isinstance(get(k), bool) or not isinstance(get(k), int)
                                          or get(k) < 1)]
        if bad:
            raise ValueError("model config entries must be positive integers: "
                             + ", ".join(f"{k}={get(k)!r}" for k in bad))
        d, heads = int(get("hidden_size")), int(get("num_attention_heads"))
        return cls(hidden_size=d, num_layers=int(get("num_hidden_layers")), num_heads=heads,
                   num_kv_heads=int(get("num_key_value_heads") or heads),
                   head_dim=int(get("head_dim") or d // heads),
                   intermediate_size=int(get("intermediate_size")),
                   vocab_size=int(get("vocab_size")),
                   tie_word_embeddings=bool(get("tie_word_embeddings", False)), name=name)

    @classmethod
    def from_json(cls, path: str | Path) -> "LLMShape":
        """From a Hugging Face config.json file (or a directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise FileNotFoundError(f"no config.json at {path}")
        try:
            cfg = json.loads(p.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{p} is not a JSON model config ({e}); pass a Hugging Face "
                             f"config.json or a preset name") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{p} holds a JSON {type(cfg).__name__}, not a model config object")
        try:
            return cls.from_hf_config(cfg, name=p.parent.name or str(p))
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """Keyword arguments for transformers.LlamaConfig."""
        return dict(hidden_size=self.hidden_size, num_hidden_layers=self.num_layers,
                    num_attention_heads=self.num_heads, num_key_value_heads=self.num_kv_heads,
                    head_dim=self.head_dim, intermediate_size=self.intermediate_size,
                    vocab_size=self.vocab_size, tie_word_embeddings=self.tie_word_embeddings)

    @property
    def params(self) -> int:
        d, q, kv = self.hidden_size, self.num_heads * self.head_dim, \
            self.num_kv_heads * self.head_dim
        layer = d * q * 2 + d * kv * 2 + 3 * d * self.intermediate_size + 2 * d
        emb = self.vocab_size * d * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * layer + emb + d


@dataclass(frozen=True)
class LCIRCShape:
    """A resolved `LCIRCConfig` (every size comes from it) plus how a context is served: the LLM
    window (tokens read directly) and the QD query length (0 without the QD mixer)."""

    config: LCIRCConfig
    window: int = 4096
    query_len: int = 0

    def __post_init__(self):
        if not isinstance(self.config, LCIRCConfig) or not self.config.is_resolved:
            raise ValueError("LCIRCShape needs a resolved LCIRCConfig (call "
                             "cfg.resolve(base_config) first)")
        _pos_int("LCIRCShape.window", self.window)
        if isinstance(self.query_len, bool) or not isinstance(self.query_len, int) \
                or self.query_len < 0:
            raise ValueError(f"LCIRCShape.query_len must be an int >= 0, got {self.query_len!r}")
        if not self.config.query_dependent:
            object.__setattr__(self, "query_len", 0)
        elif self.query_len == 0:
            raise ValueError("LCIRCShape.query_len must be >= 1 for a query-dependent config")

    @property
    def num_gca(self) -> int:
        return len(self.config.gca_layers)


# ------------------------------------------------------------------------------ primitives
def linear(n: float, d_in: int, d_out: int, wbytes: int = 2, bias: bool = False) -> Cost:
    """n rows through a [d_out, d_in] weight."""
    return Cost(2.0 * n * d_in * d_out, n * d_out if bias else 0.0,
                wbytes * (n * d_in + d_in * d_out + n * d_out))


def elementwise(n_elems: float, flops_per: float, wbytes: int = 2) -> Cost:
    return Cost(0.0, flops_per * n_elems, 2.0 * wbytes * n_elems)


def attention_core(n_q: float, n_k: float, pairs: float, heads: int, head_dim: int,
                   kv_heads: int | None = None, wbytes: int = 2) -> Cost:
    """Q·Kᵀ and P·V over `pairs` (query, key) pairs per head; Flash-style traffic."""
    kv_heads = heads if kv_heads is None else kv_heads
    io = n_q * heads * head_dim * 2 + n_k * kv_heads * head_dim * 2
    f = 4.0 * pairs * heads * head_dim
    return Cost(f, SOFTMAX_FLOPS * pairs * heads, wbytes * io, f)


def causal_pairs(t: float, past: float, causal: str) -> float:
    """(query, key) pairs of causal self-attention of t new tokens over past + t keys."""
    if causal not in CAUSAL_CONVENTIONS:
        raise ValueError(f"causal must be one of {CAUSAL_CONVENTIONS}, got {causal!r}")
    return t * past + (t * (t + 1) / 2.0 if causal == "half" else t * t)


# ------------------------------------------------------------------------------ LLM side
def llm_layer(llm: LLMShape, t: float, past: float = 0, causal: str = "half",
              wbytes: int = 2) -> Cost:
    """One Llama decoder layer over t new tokens with `past` cached keys."""
    d, q, kv = llm.hidden_size, llm.num_heads * llm.head_dim, llm.num_kv_heads * llm.head_dim
    f = llm.intermediate_size
    return total([
        elementwise(t * d, RMS_FLOPS, wbytes),
        linear(t, d, q, wbytes), linear(t, d, kv, wbytes), linear(t, d, kv, wbytes),
        elementwise(t * (q + kv), ROPE_FLOPS, wbytes),
        attention_core(t, past + t, causal_pairs(t, past, causal), llm.num_heads, llm.head_dim,
                       llm.num_kv_heads, wbytes),
        linear(t, q, d, wbytes), elementwise(t * d, 1, wbytes),
        elementwise(t * d, RMS_FLOPS, wbytes),
        linear(t, d, f, wbytes), linear(t, d, f, wbytes), elementwise(t * f, SILU_MUL_FLOPS, wbytes),
        linear(t, f, d, wbytes), elementwise(t * d, 1, wbytes),
    ])


def llm_forward(llm: LLMShape, t: float, past: float = 0, causal: str = "half",
                logits: float | None = None, wbytes: int = 2) -> Cost:
    """Frozen LLM over t tokens (+ `past` cached); lm_head over `logits` rows (default t)."""
    n_log = t if logits is None else logits
    return (llm.num_layers * llm_layer(llm, t, past, causal, wbytes)
            + elementwise(t * llm.hidden_size, RMS_FLOPS, wbytes)
            + linear(n_log, llm.hidden_size, llm.vocab_size, wbytes))


# ---------------------------------------------------------------------------- LCIRC side
def compressor_layer(s: LCIRCShape, seg_len: float, wbytes: int = 2) -> Cost:
    """One Perceiver layer: K latents attend to a segment of seg_len tokens."""
    d, k, inner, f = s.config.hidden_size, s.config.num_latents, \
        s.config.compressor_heads * s.config.compressor_head_dim, s.config.compressor_ffn
    return total([
        elementwise(seg_len * d, LN_FLOPS, wbytes), elementwise(k * d, LN_FLOPS, wbytes),
        linear(k, d, inner, wbytes), linear(seg_len, d, 2 * inner, wbytes),
        attention_core(k, seg_len, k * seg_len, s.config.compressor_heads, s.config.compressor_head_dim,
                       wbytes=wbytes),
        linear(k, inner, d, wbytes), elementwise(k * d, 1, wbytes),
        elementwise(k * d, LN_FLOPS, wbytes), linear(k, d, f, wbytes),
        elementwise(k * f, SILU_MUL_FLOPS - 1, wbytes), linear(k, f, d, wbytes),
        elementwise(k * d, 1, wbytes),
    ])


def compressor_step(s: LCIRCShape, seg_len: float, wbytes: int = 2) -> Cost:
    """h(i) = Perceiver(h(i-1), Embed(s_i) + P): position add, layers, final LN."""
    return (elementwise(seg_len * s.config.hidden_size, 1, wbytes)
            + s.config.compressor_layers * compressor_layer(s, seg_len, wbytes)
            + elementwise(s.config.num_latents * s.config.hidden_size, LN_FLOPS, wbytes))


def gca_memory_kv(s: LCIRCShape, m: float, wbytes: int = 2, sizes: tuple | None = None) -> Cost:
    """K/V projection of m memory (or query) vectors for one GCA block (`sizes`: (heads,
    head_dim, ffn) of a block sized apart from the GCA blocks, such as the QD mixer)."""
    heads, head_dim, _ = sizes or (s.config.gca_heads, s.config.gca_head_dim, s.config.gca_ffn)
    return linear(m, s.config.hidden_size, 2 * heads * head_dim, wbytes)


def gca_block(s: LCIRCShape, t: float, m: float, project_kv: bool = True,
              wbytes: int = 2, sizes: tuple | None = None) -> Cost:
    """One GCA block: t tokens attend to m memory vectors (K/V projection if project_kv);
    `sizes` as in `gca_memory_kv`."""
    heads, head_dim, f = sizes or (s.config.gca_heads, s.config.gca_head_dim, s.config.gca_ffn)
    d, inner = s.config.hidden_size, heads * head_dim
    c = total([
        elementwise(t * d, LN_FLOPS, wbytes), linear(t, d, inner, wbytes),
        attention_core(t, m, t * m, heads, head_dim, wbytes=wbytes),
        linear(t, inner, d, wbytes), elementwise(t * d, 2, wbytes),
        elementwise(t * d, LN_FLOPS, wbytes), linear(t, d, f, wbytes),
        elementwise(t * f, SILU_MUL_FLOPS - 1, wbytes), linear(t, f, d, wbytes),
        elementwise(t * d, 2, wbytes),
    ])
    return c + gca_memory_kv(s, m, wbytes, sizes) if project_kv else c


def mixer_step(s: LCIRCShape, project_kv: bool = True, wbytes: int = 2) -> Cost:
    """QD mixer (a GCA block sized like the compressor unless set apart): the K latents attend
    to the query_len query embeddings."""
    if not s.config.query_dependent:
        return ZERO
    return gca_block(s, s.config.num_latents, s.query_len, project_kv, wbytes,
                     sizes=(s.config.mixer_heads, s.config.mixer_head_dim, s.config.mixer_ffn))


# ------------------------------------------------------------------------------ splitting
@dataclass(frozen=True)
class Split:
    """How a context of n tokens is served: compressed part, segments, memory, LLM window."""

    context: int
    compressed: int
    segments: list[int]
    memory: int
    window: int


def split(s: LCIRCShape, n: int) -> Split:
    _pos_int("context length", n)
    comp = max(0, n - s.window)
    segs = balanced_lengths(comp, s.config.segment_len)
    mem = len(segs) * s.config.num_latents
    if s.config.memory_cap is not None:
        mem = min(mem, s.config.memory_cap)
    return Split(n, comp, segs, mem, min(n, s.window))


# ----------------------------------------------------------------------------- workloads
def compress(s: LCIRCShape, n_compress: int, cache_query_kv: bool = True,
             wbytes: int = 2) -> Cost:
    """All recurrence steps for n_compress tokens, QD mixer included.

    cache_query_kv: the mixer's query K/V are projected once per document (False: at every
    step, as the reference code does).
    """
    segs = balanced_lengths(n_compress, s.config.segment_len)
    c = total(count * (compressor_step(s, L, wbytes) + mixer_step(s, not cache_query_kv, wbytes))
              for L, count in Counter(segs).items())
    if segs and s.config.query_dependent and cache_query_kv:
        c = c + gca_memory_kv(s, s.query_len, wbytes)
    return c


def lcirc_window(llm: LLMShape, s: LCIRCShape, t: int, m: int, causal: str = "half",
                 logits: float | None = None, past: float = 0, cached_kv: bool = False,
                 wbytes: int = 2) -> Cost:
    """LLM over t tokens with GCA over m memory vectors (no GCA when m == 0)."""
    c = llm_forward(llm, t, past, causal, logits, wbytes)
    if m > 0:
        c = c + s.num_gca * gca_block(s, t, m, project_kv=not cached_kv, wbytes=wbytes)
    return c


def lcirc_prefill(llm: LLMShape, s: LCIRCShape, n: int, causal: str = "half",
                  logits: float | None = None, wbytes: int = 2) -> Cost:
    """Compress the first n - window tokens, then the window forward with GCA."""
    sp = split(s, n)
    return compress(s, sp.compressed, wbytes) + lcirc_window(llm, s, sp.window, sp.memory, causal,
                                                              logits, wbytes=wbytes)


def full_prefill(llm: LLMShape, n: int, causal: str = "half", logits: float | None = None,
                 wbytes: int = 2) -> Cost:
    """The baseline: the same LLM over all n tokens (Flash-style, no N×N matrix in memory)."""
    return llm_forward(llm, n, 0, causal, logits, wbytes)


def lcirc_decode_token(llm: LLMShape, s: LCIRCShape, n: int, cached_memory_kv: bool = True,
                       causal: str = "half", wbytes: int = 2) -> Cost:
    """One new token after an n-token prompt: LLM over its window KV cache + GCA.

    cached_memory_kv=False re-projects every block's memory K/V at each token (reference code).
    """
    sp = split(s, n)
    return lcirc_window(llm, s, 1, sp.memory, causal, past=sp.window,
                        cached_kv=cached_memory_kv, wbytes=wbytes)


def full_decode_token(llm: LLMShape, n: int, causal: str = "half", wbytes: int = 2) -> Cost:
    """One new token after an n-token prompt with full attention over the whole KV cache."""
    return llm_forward(llm, 1, n, causal, wbytes=wbytes)


# ------------------------------------------------------------------------------- training
def grad_steps(policy: Any, num_steps: int) -> float:
    """Compressor steps on the gradient path under a BPTT policy: a `lcirc_fast.bptt` policy or
    spec (a mapping, or text such as "selective:8"; see `bptt.parse_spec`). Selective draws with
    replacement count the expected number of distinct steps."""
    if not isinstance(policy, bptt.BPTTPolicy):
        policy = bptt.from_spec(policy, key="BPTT policy")
    return policy.grad_steps(num_steps)


BWD_TRAINABLE_LINEAR, BWD_FROZEN_LINEAR, BWD_ATTENTION, BWD_ELEMENTWISE = 2.0, 1.0, 2.5, 1.0


def backward(c: Cost, trainable: bool) -> Cost:
    """Backward cost of a forward `c` (see the module conventions)."""
    lin = (c.matmul - c.attn) * (BWD_TRAINABLE_LINEAR if trainable else BWD_FROZEN_LINEAR)
    return Cost(lin + BWD_ATTENTION * c.attn, BWD_ELEMENTWISE * c.other, 2.0 * c.bytes,
                BWD_ATTENTION * c.attn)


def train_step(llm: LLMShape, s: LCIRCShape, n: int, policy: Any = "full",
               causal: str = "half", wbytes: int = 2) -> Cost:
    """One training step on an n-token document: forward of every compressor step and of the
    window (LLM + GCA), backward through the window and the steps on the gradient path."""
    sp = split(s, n)
    steps = len(sp.segments)
    all_steps = total(count * (compressor_step(s, L, wbytes) + mixer_step(s, False, wbytes))
                      for L, count in Counter(sp.segments).items())
    g = grad_steps(policy, steps)
    mean_step = all_steps * (1.0 / steps) if steps else ZERO
    qkv = gca_memory_kv(s, s.query_len, wbytes) if steps and s.config.query_dependent else ZERO
    fwd_comp = all_steps + qkv + (backward(qkv, trainable=True) if g else ZERO)
    llm_part = llm_forward(llm, sp.window, 0, causal, wbytes=wbytes)
    gca = s.num_gca * gca_block(s, sp.window, sp.memory, True, wbytes) if sp.memory else ZERO
    return (fwd_comp + llm_part + gca + backward(llm_part, trainable=False)
            + backward(gca, trainable=True) + backward(g * mean_step, trainable=True))


# --------------------------------------------------------------------------------- tables
def sweep(llm: LLMShape, s: LCIRCShape, lengths: Iterable[int], wbytes: int = 2) -> list[dict]:
    """Per length: LCIRC and full-attention prefill FLOPs under both causal conventions."""
    rows = []
    for n in lengths:
        sp = split(s, n)
        row: dict[str, Any] = {"tokens": n, "segments": len(sp.segments), "memory": sp.memory,
                               "window": sp.window}
        for conv in CAUSAL_CONVENTIONS:
            lc = lcirc_prefill(llm, s, n, conv, wbytes=wbytes)
            fa = full_prefill(llm, n, conv, wbytes=wbytes)
            row[f"lcirc_flops_{conv}"] = lc.flops
            row[f"full_flops_{conv}"] = fa.flops
            row[f"ratio_{conv}"] = lc.flops / fa.flops
        row["lcirc_bytes"] = lcirc_prefill(llm, s, n, wbytes=wbytes).bytes
        row["full_bytes"] = full_prefill(llm, n, wbytes=wbytes).bytes
        row["decode_cached_flops"] = lcirc_decode_token(llm, s, n, True).flops
        row["decode_recompute_flops"] = lcirc_decode_token(llm, s, n, False).flops
        rows.append(row)
    return rows


def crossover(llm: LLMShape, s: LCIRCShape, causal: str = "half",
              hi: int | None = None) -> int | None:
    """Smallest context length where LCIRC prefill FLOPs < full attention's (None if > hi)."""
    hi = hi or max(1 << 20, 256 * s.window)
    def cheaper(n: int) -> bool:
        return lcirc_prefill(llm, s, n, causal).flops < full_prefill(llm, n, causal).flops

    lo = s.window + 1
    if cheaper(lo):
        return lo
    if not cheaper(hi):
        return None
    while hi - lo > 1:  # cost difference is monotone in n except for segment-boundary wiggles
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if cheaper(mid) else (mid, hi)
    return hi


def format_flops(x: float) -> str:
    for unit, k in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if x >= k:
            return f"{x / k:.3g}{unit}"
    return f"{x:.3g}"


def format_table(rows: list[dict]) -> str:
    head = (f"{'tokens':>9} {'segs':>5} {'memory':>7} {'LCIRC(half)':>12} {'full(half)':>11} "
            f"{'ratio(half)':>11} {'LCIRC(full)':>12} {'full(full)':>11} {'ratio(full)':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['tokens']:>9} {r['segments']:>5} {r['memory']:>7} "
            f"{format_flops(r['lcirc_flops_half']):>12} {format_flops(r['full_flops_half']):>11} "
            f"{100 * r['ratio_half']:>10.2f}% {format_flops(r['lcirc_flops_full']):>12} "
            f"{format_flops(r['full_flops_full']):>11} {100 * r['ratio_full']:>10.2f}%")
    return "\n".join(lines)


def _log2_lengths(lo: int = 4096, hi: int = 1 << 20) -> list[int]:
    return [1 << e for e in range(int(math.log2(lo)), int(math.log2(hi)) + 1)]


DEFAULT_LENGTHS = _log2_lengths()
