"""Memory per GPU of a training config: weights, gradients, optimizer states and the
activations one micro-step saves for its backward pass.

Weights, gradients and optimizer states follow the ZeRO accounting (Rajbhandari et al., 2020)
for N ranks: stage 1 shards the optimizer states, stage 2 also the gradients, stage 3 also the
weights. An optimizer state costs 12 bytes per trainable parameter (fp32 master copy + two fp32
Adam moments) under DeepSpeed's bf16 mode or any ZeRO stage, and 2 x the parameter's size for
the plain torch AdamW (two moments in the parameter's dtype).

Activations are the tensors autograd saves in one micro-step, counted per module from the
shapes this package's modules and Hugging Face's Llama save (`tests/train/test_paper_recipe.py`
checks the count against a run on the CPU): the decoder layers from the first GCA block on
(layers before it see no trainable input and save nothing), the GCA blocks over the capped
memory, the fp32 logits of the loss (every window position: an upper bound in stage 2, whose
answer loss projects only from the first answer position on), and every compression step that
keeps its graph under the BPTT policy, at the longest segment (`data.segment_max`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

FP32, INT64 = 4, 8
MASTER_AND_ADAM = 12      # fp32 master weights + fp32 Adam m and v, bytes per parameter


@dataclass
class Plan:
    """What one rank holds: world size, ZeRO stage, mixed precision, element size of the weights."""
    world: int
    zero_stage: int
    bf16: bool
    elem: int                   # bytes per element of weights and activations (2 bf16, 4 fp32)
    engine: str                 # plain | deepspeed


@dataclass
class MemoryEstimate:
    """Bytes per GPU by term (insertion order is the report's order)."""
    terms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return float(sum(self.terms.values()))

    def largest(self) -> tuple[str, float]:
        return max(self.terms.items(), key=lambda kv: kv[1])


def states_bytes(trainable: int, frozen: int, plan: Plan) -> dict[str, float]:
    """Weights, gradients and optimizer states of one rank under `plan`."""
    n = max(1, plan.world)
    stage = plan.zero_stage if plan.engine == "deepspeed" else 0
    opt_per = MASTER_AND_ADAM if (plan.engine == "deepspeed" and (plan.bf16 or stage >= 1)) \
        else 2 * plan.elem
    weights = (trainable + frozen) * plan.elem / (n if stage >= 3 else 1)
    grads = trainable * plan.elem / (n if stage >= 2 else 1)
    opt = trainable * opt_per / (n if stage >= 1 else 1)
    return {"weights": weights, "gradients": grads, "optimizer states": opt}


# ---------------------------------------------------------------- activations (elements)
def decoder_layer_elems(t: int, hf) -> float:
    """One Llama decoder layer on t tokens whose input needs grad: the two RMSNorm inputs and
    their inverse RMS, q/k/v after RoPE, the SDPA output and log-sum-exp, and the MLP's gate,
    up and SiLU outputs."""
    d, h = hf.hidden_size, hf.num_attention_heads
    hkv = getattr(hf, "num_key_value_heads", None) or h
    dh = getattr(hf, "head_dim", None) or d // h
    return t * (2 * d + 2 + dh * (2 * h + 2 * hkv) + h + 3 * hf.intermediate_size)


def gca_block_elems(t: int, d: int, heads: int, head_dim: int, ffn: int) -> float:
    """One GCA block on t tokens: two LayerNorm inputs and statistics, their outputs, q, the
    attention output and log-sum-exp, the out-projection input, the two gated branches and the
    MLP's two inner activations."""
    inner = heads * head_dim
    return t * (5 * d + 4 + 2 * inner + heads + 2 * ffn) + 2


def compressor_step_elems(seg: int, lc) -> float:
    """One Perceiver call with its graph on a seg-token segment: the segment input, its
    LayerNorm statistics and output (shared by the layers' one K/V product), every layer's K/V
    and copied K/V weight, the latent side (K rows) of every layer and the final LayerNorm."""
    d, k = lc.hidden_size, lc.num_latents
    inner = lc.compressor_heads * lc.compressor_head_dim
    per_layer = seg * 2 * inner + d * 2 * inner \
        + k * (4 * d + 4 + 2 * inner + lc.compressor_heads + 2 * lc.compressor_ffn)
    return seg * (2 * d + 2) + lc.compressor_layers * per_layer + k * (d + 2)


def mixer_elems(query: int, lc, steps: int) -> float:
    """The QD mixer over `steps` calls with their graph: a GCA block on the K latents per call,
    plus the query's K/V, projected once per sample."""
    inner = lc.mixer_heads * lc.mixer_head_dim
    per_call = gca_block_elems(lc.num_latents, lc.hidden_size, lc.mixer_heads, lc.mixer_head_dim,
                               lc.mixer_ffn)
    return steps * per_call + query * (2 * inner + lc.hidden_size) + lc.hidden_size * 2 * inner


def graph_steps(bptt: dict, steps: int) -> int:
    """Compression steps whose graph is alive at the backward pass (worst case: distinct draws)."""
    kind = bptt.get("kind")
    if kind == "truncated":
        return min(int(bptt.get("k", 1)), steps)
    if kind == "selective":
        n = int(bptt.get("n", 8))
        return steps if steps <= n else n
    return steps


@dataclass
class MicroStep:
    """The shape of one micro-step: tokens the LLM reads, memory vectors the GCA reads,
    compression steps and how many keep their graph, segment and query lengths."""
    window: int
    memory: int
    steps: int
    graph_steps: int
    segment: int
    query: int
    batch: int


def micro_step(cfg, lc) -> MicroStep:
    """The largest micro-step of `cfg` (`lc`: the resolved LCIRCConfig)."""
    d = cfg.data
    seg = d.segment_max if d.segmenting == "random" else min(d.segment_max, 2 * lc.segment_len - 1)
    cap = lc.memory_cap
    steps = math.ceil(cap / lc.num_latents) if cap else 64
    if cfg.stage == 1:
        steps = steps + 1       # the newest segment plus a full memory behind it
    memory = min(cap, steps * lc.num_latents) if cap else steps * lc.num_latents
    query = 64 if lc.query_dependent else 0
    return MicroStep(d.window, memory, steps, graph_steps(cfg.train.bptt, steps), seg, query,
                     cfg.train.batch_size)


def activation_bytes(hf, lc, ms: MicroStep, elem: int, checkpointing: bool = False) -> dict[str, float]:
    """Bytes autograd keeps for one micro-step, by part."""
    t, b = ms.window, ms.batch
    first = min(lc.gca_layers)
    layers = hf.num_hidden_layers - first
    dh = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    n_gca = len(lc.gca_layers)
    inner = lc.gca_heads * lc.gca_head_dim
    llm = layers * decoder_layer_elems(t, hf) + 2 * t * dh + t * (hf.hidden_size + 1)
    gca = n_gca * gca_block_elems(t, lc.hidden_size, lc.gca_heads, lc.gca_head_dim, lc.gca_ffn)
    memory = ms.memory * lc.hidden_size + n_gca * 2 * ms.memory * inner + lc.hidden_size * 2 * inner * n_gca
    comp = ms.graph_steps * compressor_step_elems(ms.segment, lc)
    if lc.query_dependent:
        comp += mixer_elems(ms.query, lc, ms.graph_steps)
    out = {"LLM layers": b * llm * elem, "GCA blocks": b * (gca + memory) * elem,
           "logits": b * t * (hf.vocab_size * FP32 + INT64), "compression": b * comp * elem}
    if checkpointing:   # the window's forward is recomputed: only its inputs stay
        out["LLM layers"] = b * t * hf.hidden_size * elem
        out["GCA blocks"] = b * memory * elem
        out["logits"] = 0.0
    return out
