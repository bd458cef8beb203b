"""End-to-end section for the GPU suite (same folder): `from e2e_section import run_e2e`.

Builds a random-weight Llama-2-7B-shaped LCIRC model (bf16) and runs the `lcirc bench` sweep
(prefill LCIRC vs full attention vs eager reference, decode with cached vs re-projected memory
K/V, a training step), plus a decode point at 3200 memory tokens (50 segments). Writes
e2e.json / e2e.png under `out_dir` and returns the result dict.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

DEFAULT_LENGTHS = (4096, 8192, 16384, 32768, 65536, 131072)


def run_e2e(out_dir: str | Path, lengths=DEFAULT_LENGTHS, preset: str = "llama2-7b",
            decode_tokens: int = 16, train: bool = False, reference: bool = False) -> dict:
    from lcirc_fast import flops as fl
    from lcirc_fast.bench.presets import get_preset
    from lcirc_fast.bench.report import measured_table, plot, write_json
    from lcirc_fast.bench.sweep import SweepOptions, run_sweep

    if not torch.cuda.is_available():
        raise RuntimeError("run_e2e needs a CUDA device")
    out = Path(out_dir)
    p = get_preset(preset)
    s = p.shape()
    lengths = list(lengths)
    n3200 = p.window + (3200 // s.num_latents) * s.segment_len   # 3200 memory vectors
    if n3200 not in lengths:
        lengths.append(n3200)
    t0 = time.perf_counter()
    opts = SweepOptions(lengths=lengths, device="cuda", dtype=torch.bfloat16,
                        decode_tokens=decode_tokens, train=train, reference=reference)
    res = run_sweep(p, opts, progress=lambda m: print(f"[e2e {time.perf_counter() - t0:6.1f}s] {m}",
                                                      flush=True))
    res["crossover_flops"] = {c: fl.crossover(p.llm, s, c) for c in fl.CAUSAL_CONVENTIONS}
    write_json(out / "e2e.json", res)
    plot(out / "e2e.png", res["rows"], f"{preset} on {torch.cuda.get_device_name()}")
    print(measured_table(res["rows"]))
    return res
