"""benchmarks/serve_bench.py end to end on a short document: every stage runs and writes its
figures, and its built-in checks hold (cached and from-scratch QD answers agree; FewRowLinear
and nn.Linear answer alike)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "serve_bench.py"


@pytest.mark.slow
def test_serve_bench_runs_every_stage_and_its_answers_agree(tmp_path):
    out = tmp_path / "serve.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tokens", "256", "--new-tokens", "2",
                           "--threads", "1", "--throughput-questions", "4", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["tokens"] == 256 and res["new_tokens"] == 2

    for kind in ("lcirc", "qd"):
        part = res[kind]
        assert part["doc"]["tokens"] == 256
        assert part["first_s"] > 0 and len(part["later_all_s"]) == 7
        assert all(t > 0 for t in part["later_all_s"] + part["later_first_token_all_s"])
        assert len(part["answers"]) == 8 and all(len(a) == 2 for a in part["answers"])
    qd = res["qd"]
    assert len(qd["paired"]) == 7 and qd["scratch_s"] > 0 and qd["scratch_over_later"] > 0
    # the cached question-free part gives the answers a full compress with the query gives
    assert qd["scratch_answers_identical"] == "7/7"

    assert res["few_row"]["answers_identical"] == "8/8"
    assert set(res["throughput_qps"]) == {"1", "4", "16"}
    assert all(q > 0 for q in res["throughput_qps"].values())
    bf16 = res["bf16"]
    assert bf16["compress_fp32_s"] > 0 and bf16["compress_bf16_s"] > 0
    assert 0 < bf16["memory_rel_error"] < 0.05          # bfloat16's ~3 significant digits
    assert res["full_attention_s"] > 0
