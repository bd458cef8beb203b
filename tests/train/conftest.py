import copy

import pytest

TINY = {
    "stage": 1,
    "seed": 3,
    "base": {"name": "tiny_random"},
    "lcirc": {"num_latents": 4, "compressor_layers": 1, "max_segment_len": 64, "segment_len": 32,
              "memory_cap": 16},
    "data": {"source": "synthetic_tokens", "window": 32, "segment_min": 8,
             "segment_max": 48, "synthetic_docs": 8, "synthetic_len": 200, "val_docs": 2,
             "qa_context": [40, 90]},
    "train": {"max_steps": 4, "grad_accum": 3, "lr": 1.0e-3, "warmup_steps": 1, "eval_every": 2,
              "save_every": 2, "log_every": 0},
}


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(**sections):
        d = copy.deepcopy(TINY)
        d["output_dir"] = str(tmp_path / "run")
        for k, v in sections.items():
            if isinstance(v, dict):
                d.setdefault(k, {}).update(v)
            else:
                d[k] = v
        return d
    return make
