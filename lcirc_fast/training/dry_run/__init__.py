"""`lcirc train --dry-run`: whether a training config fits, before renting the machines.

`dry_run(cfg, gpus, gpu_memory)` builds the model on the meta device from the base's config
alone (nothing is downloaded, no weight is read), checks the data layout the config names, and
returns a `DryRun` with the parameter counts by part, the memory per GPU by term, the FLOPs of
one optimizer step and the time it would take at `MFU` of `PEAK_FLOPS`. `format_report` prints it,
ending with one line that says whether the run fits.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ConfigError
from .data_check import check_data
from .estimate import MemoryEstimate, Plan, activation_bytes, micro_step, states_bytes
from .shape import base_shape, meta_model, parameter_parts

GIB = 1 << 30
PEAK_FLOPS = 989e12        # H100 SXM dense bf16 FLOP/s, the reference point of the step time
MFU = 0.40                 # the stated fraction of that peak
RESERVE = 0.10             # share of GPU memory kept free (CUDA context, workspaces, fragmentation)
FIXES = {"weights": "ZeRO stage 3 shards the weights (train/ds_configs/zero3_gpu.json)",
         "gradients": "ZeRO stage 2 shards the gradients (train/ds_configs/paper_8gpu_zero2_bf16.json)",
         "optimizer states": "ZeRO stage 1 or 2 shards the optimizer states, and more GPUs shrink each shard",
         "activations": "shorten data.window or data.segment_max, lower train.batch_size, or set "
                        "train.activation_checkpointing: true"}


def parse_memory(text: str) -> float:
    """Bytes of '80GB', '80GiB', '80' (GB and GiB both mean 2**30 bytes, as nvidia-smi shows)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(gb|gib|g)?\s*", str(text).lower())
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"--gpu-memory {text}: must be a size such as 80GB or 40GiB")
    return float(m.group(1)) * GIB


@dataclass
class DryRun:
    params: dict
    base_source: str
    base_weights_found: bool
    gpus: int
    gpu_memory: float
    plan: Plan
    memory: MemoryEstimate
    micro: object
    flops_per_step: float          # all ranks, one optimizer step
    seconds_per_step: float
    data_lines: list = field(default_factory=list)

    @property
    def usable(self) -> float:
        return self.gpu_memory * (1 - RESERVE)

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.usable


def _plan(cfg, gpus: int, elem: int) -> Plan:
    dist = cfg.distributed
    if dist.engine != "deepspeed":
        if gpus != 1:
            raise ConfigError(f"--gpus {gpus}: distributed.engine = 'plain' runs one process; use "
                              "distributed.engine: deepspeed for several GPUs")
        return Plan(1, 0, False, elem, "plain")
    stage, bf16 = 0, True
    if dist.deepspeed_config:
        path = Path(dist.deepspeed_config)
        if not path.is_file():
            raise FileNotFoundError(f"distributed.deepspeed_config = {str(path)!r}: no such file")
        ds = json.loads(path.read_text())
        stage = int(ds.get("zero_optimization", {}).get("stage", 0))
        bf16 = bool(ds.get("bf16", {}).get("enabled", False))
    return Plan(gpus, stage, bf16, elem, "deepspeed")


def _mean_segment(cfg, lc) -> float:
    d = cfg.data
    if d.segmenting != "random":
        return float(lc.segment_len)
    lengths = range(d.segment_min, d.segment_max + 1)     # P(l) proportional to l
    return sum(x * x for x in lengths) / sum(lengths)


def step_flops(cfg, hf, lc, ms) -> float:
    """FLOPs of one micro-step on one rank (forward + backward) from the project's FLOP model."""
    from ... import flops as F

    llm = F.LLMShape.from_hf_config(hf)
    s = F.LCIRCShape(lc, window=ms.window, query_len=ms.query if lc.query_dependent else 0)
    seg = _mean_segment(cfg, lc)
    calls = 1 if cfg.stage == 1 else ms.steps        # compressor calls made in this micro-step
    one = F.compressor_step(s, seg) + (F.mixer_step(s, False) if lc.query_dependent else F.ZERO)
    comp = calls * one + (F.gca_memory_kv(s, ms.query) if lc.query_dependent else F.ZERO)
    comp = comp + ms.graph_steps * F.backward(one, trainable=True) if cfg.stage == 2 else \
        comp + min(1, ms.graph_steps) * F.backward(one, trainable=True)
    window = F.llm_forward(llm, ms.window, 0, "half")
    gca = len(lc.gca_layers) * F.gca_block(s, ms.window, ms.memory, True)
    total = comp + window + F.backward(window, trainable=False) + gca + F.backward(gca, trainable=True)
    return ms.batch * total.flops


def dry_run(cfg, gpus: int = 1, gpu_memory: str | float = "80GB") -> DryRun:
    """Everything `lcirc train --dry-run` prints, for a checked TrainConfig."""
    if not isinstance(gpus, int) or gpus < 1:
        raise ConfigError(f"--gpus {gpus}: must be an integer >= 1")
    mem = parse_memory(gpu_memory) if isinstance(gpu_memory, str) else float(gpu_memory)
    shape = base_shape(cfg)
    model = meta_model(cfg, shape)
    lc = model.config
    parts = parameter_parts(model)
    trainable, frozen = sum(parts["trainable"].values()), sum(parts["frozen"].values())
    elem = 2 if cfg.base.dtype == "bfloat16" else 4
    plan = _plan(cfg, gpus, elem)
    ms = micro_step(cfg, lc)
    est = MemoryEstimate(states_bytes(trainable, frozen, plan))
    acts = activation_bytes(shape.config, lc, ms, elem, cfg.train.activation_checkpointing)
    est.terms["activations"] = sum(acts.values())
    est.notes.append("activations: " + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in acts.items()))
    micro = step_flops(cfg, shape.config, lc, ms)
    per_rank = micro * cfg.train.grad_accum
    return DryRun(parts, shape.source, shape.weights_found, gpus, mem, plan, est, ms,
                  per_rank * gpus, per_rank / (MFU * PEAK_FLOPS), check_data(cfg))


def _count(n: int) -> str:
    return f"{n:,} ({n / 1e9:.2f}B)" if n >= 1e8 else f"{n:,}"


def format_report(r: DryRun, cfg) -> str:
    """The dry run as text; the last line says whether the run fits."""
    out = [f"base: {r.base_source}"]
    if not r.base_weights_found:
        out.append(f"  note: {cfg.base.name} has no weights yet; download them there before the real run")
    for side in ("trainable", "frozen"):
        total = sum(r.params[side].values())
        out.append(f"{side} parameters: {_count(total)}")
        out += [f"  {part:<22}{_count(n)}" for part, n in r.params[side].items()]
    ms, p = r.micro, r.plan
    zero = f"ZeRO stage {p.zero_stage}" if p.engine == "deepspeed" else "plain engine"
    out.append(f"memory per GPU ({zero}, {'bf16' if p.bf16 else 'fp32' if p.elem == 4 else 'bf16 weights'}, "
               f"{r.gpus} GPU{'s' if r.gpus > 1 else ''}):")
    out += [f"  {k:<22}{v / GIB:8.2f} GiB" for k, v in r.memory.terms.items()]
    out.append(f"  {'total':<22}{r.memory.total / GIB:8.2f} GiB")
    out += [f"  {n}" for n in r.memory.notes]
    out.append(f"  micro-step: batch {ms.batch}, window {ms.window} tokens, memory {ms.memory} vectors, "
               f"{ms.graph_steps} of {ms.steps} compression steps with graph, segments up to {ms.segment} "
               f"tokens, BPTT {cfg.train.bptt}")
    out.append(f"FLOPs per optimizer step: {r.flops_per_step:.3e} ({cfg.train.grad_accum} micro-steps x "
               f"{r.gpus} GPUs); {r.seconds_per_step:.2f} s per step at {MFU:.0%} of {PEAK_FLOPS / 1e12:.0f} "
               f"TFLOP/s (H100 bf16 dense); {cfg.train.max_steps} steps: "
               f"{r.seconds_per_step * cfg.train.max_steps / 3600:.1f} h")
    out += [f"data: {line}" for line in r.data_lines]
    used, usable = r.memory.total / GIB, r.usable / GIB
    if r.fits:
        out.append(f"fits: yes, {used:.1f} GiB of {usable:.1f} GiB usable per GPU "
                   f"({r.gpu_memory / GIB:.0f} GiB less {RESERVE:.0%} kept free)")
    else:
        name, big = r.memory.largest()
        out.append(f"fits: no, {used:.1f} GiB > {usable:.1f} GiB usable per GPU; the largest term is "
                   f"{name} ({big / GIB:.1f} GiB): {FIXES[name]}")
    return "\n".join(out)


__all__ = ["DryRun", "dry_run", "format_report", "parse_memory", "GIB", "MFU", "PEAK_FLOPS"]
