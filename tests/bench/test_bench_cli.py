"""`lcirc bench` end to end on the tiny preset, and its input checks."""
import argparse
import json

import pytest
import torch

from lcirc_fast.cli import bench as cli


def parse(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli.add_parser(sub)
    return parser.parse_args(["bench", *argv])


def test_tiny_bench_writes_json_png_and_table(tmp_path, capsys):
    rc = cli.run(parse(["--model", "tiny", "--device", "cpu", "--lengths", "32,80",
                        "--decode-tokens", "2", "--max-repeats", "4", "--threads", "1",
                        "--out", str(tmp_path)]))
    assert rc == 0
    out = capsys.readouterr().out
    assert "FLOPs LCIRC" in out and "crossover" in out and "self-check" in out
    assert "threads: 1 (--threads" in out and "competing load:" in out and "GEMM rate" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["schema"] == 2 and isinstance(data["flags"], list)
    rows = data["rows"]
    assert [r["tokens"] for r in rows] == [32, 80]
    short, long = rows
    assert short["memory"] == 0 and "decode_cached_tok_s" not in short
    assert set(short["timing"]) == {"full", "lcirc", "reference"}
    assert long["segments"] == 3 and long["memory"] == 12   # 48 tokens in 16-token segments
    assert set(long["timing"]) == {"full", "lcirc", "compress", "window", "reference",
                                   "decode_cached", "decode_recompute", "train"}
    for name, st in long["timing"].items():
        assert 3 <= st["n"] <= 4 and len(st["samples"]) == st["n"], name
        assert 0 < st["min"] <= st["q1"] <= st["median"] <= st["q3"] <= st["max"], name
    # interleaved: every method appears in the first round, before any second run
    first_round = long["interleaving"][:8]
    assert sorted(first_round) == sorted(long["timing"])
    for key in ("lcirc_s", "full_s", "reference_s", "compress_s", "window_s",
                "decode_cached_tok_s", "decode_recompute_tok_s", "train_s", "flops_train"):
        assert long[key] > 0, key
    for key in ("full_peak_bytes", "lcirc_peak_bytes", "reference_peak_bytes",
                "train_peak_bytes"):
        assert long[key] > 0, key                       # never 0 B for a run that allocates
    assert set(long["breakdown"]["share"]) == {"compress", "window", "decode"}
    assert sum(long["breakdown"]["share"].values()) == pytest.approx(1.0)
    assert long["compressor"]["gemm_fraction"] > 0 and long["compressor"]["matmul_flops"] > 0
    lo, hi = long["speedup_range"]
    assert lo <= long["speedup"] <= hi
    assert long["flops_lcirc_half"] < long["flops_full_half"]
    assert short["flops_lcirc_half"] == short["flops_full_half"]
    meta = data["meta"]
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["threads"]["count"] == 1 and meta["threads"]["reason"] == "--threads"
    assert meta["load"]["other_cores"] is None or meta["load"]["other_cores"] >= 0
    assert meta["gemm"]["start"]["shape"] == [48, 64, 256] and meta["gemm"]["flop_s"] > 0
    assert "fresh process" in meta["memory_method"]
    kinds = {f["kind"] for f in data["flags"]}
    assert kinds <= {"falls_with_length", "spread", "competing_load", "gemm_drift",
                     "above_gemm_rate", "no_memory"}
    png = (tmp_path / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_two_tiny_runs_use_the_same_model_inputs_and_plan():
    """Reproducibility of the machinery (not of the timings): the same weights and token ids
    in every run, the same methods, each timed >= the minimum, with an uncounted warm-up."""
    from lcirc_fast.bench.presets import get_preset
    from lcirc_fast.bench.sweep import SweepOptions, build_model, run_sweep, workloads

    preset = get_preset("tiny")
    opts = SweepOptions(lengths=[80], decode_tokens=2, memory=False, train=False,
                        reference=False, threads=1, max_repeats=3)
    runs = [run_sweep(preset, opts) for _ in range(2)]
    a, b = (r["rows"][0] for r in runs)
    assert a.keys() == b.keys() and a["timing"].keys() == b["timing"].keys()
    assert sorted(a["interleaving"]) == sorted(b["interleaving"])
    for r in (a, b):
        assert all(st["n"] == 3 for st in r["timing"].values())
        assert all(n >= 1 for n in r["warmup_runs"].values())
        assert r["speedup"] > 0
    assert a["flops_lcirc_half"] == b["flops_lcirc_half"]
    outs = []
    for _ in range(2):
        model = build_model(preset, "cpu", torch.float32)
        outs.append(workloads(model, preset, 80, opts)["lcirc"].run())
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_flops_only_reports_llama_at_128k(tmp_path, capsys):
    rc = cli.run(parse(["--flops-only", "--model", "llama2-7b", "--lengths", "4k,128k,1M",
                        "--out", str(tmp_path)]))
    assert rc == 0
    out = capsys.readouterr().out
    assert "ratio(half)" in out and "ratio(full)" in out
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["tokens"] for r in rows] == [4096, 131072, 1 << 20]
    assert rows[1]["ratio_half"] < 0.02
    assert (tmp_path / "bench.png").exists()


def test_hf_config_path_is_accepted(tmp_path, capsys):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(dict(hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=512,
                                   vocab_size=1000)))
    assert cli.run(parse(["--flops-only", "--model", str(cfg), "--lengths", "8k",
                          "--out", str(tmp_path / "o")])) == 0


@pytest.mark.parametrize("argv, message", [
    (["--lengths", "0"], "must be >= 1"),
    (["--lengths", "12x"], "not a token count"),
    (["--lengths", ","], "empty"),
    (["--model", "llama-9000"], "unknown model"),
    (["--window", "0", "--model", "tiny"], "--window"),
    (["--segment-len", "-4", "--model", "tiny"], "--segment-len"),
    (["--decode-tokens", "-1"], "--decode-tokens"),
    (["--threads", "0"], "--threads"),
    (["--repeats", "0"], "--repeats"),
    (["--repeats", "5", "--max-repeats", "4"], "--max-repeats"),
    (["--train-policy", "sometimes"], "BPTT policy"),
])
def test_bad_inputs_give_clear_errors(argv, message, tmp_path, capsys):
    from lcirc_fast.cli import main

    rc = main(["bench", *argv, "--flops-only", "--out", str(tmp_path)])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_parse_lengths_units():
    assert cli.parse_lengths("512, 1k,4K,1m,512") == [512, 1024, 4096, 1 << 20]


def test_results_survive_without_matplotlib(tmp_path, capsys, monkeypatch):
    """A missing matplotlib costs the plot only: the JSON is written and the output says so."""
    import sys

    from lcirc_fast.cli import main
    from lcirc_fast.eval.harness import plot_lines

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    out = tmp_path / "b"
    assert main(["bench", "--flops-only", "--lengths", "4k,8k", "--out", str(out)]) == 0
    assert (out / "bench.json").is_file() and not (out / "bench.png").exists()
    assert "no " + str(out / "bench.png") + " (matplotlib is not installed)" in capsys.readouterr().out
    assert plot_lines(tmp_path / "p.png", {"a": [(1, 2.0)]}, "x", "y", "t") is False
    assert not (tmp_path / "p.png").exists()


def test_a_config_json_builds_its_own_family(tmp_path):
    from lcirc_fast.bench.presets import get_preset
    from lcirc_fast.bench.sweep import build_model
    from lcirc_fast.errors import ConfigError

    cfg = tmp_path / "config.json"
    fields = dict(model_type="qwen2", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=128, vocab_size=300)
    cfg.write_text(json.dumps(fields))
    preset = get_preset(str(cfg), window=32, segment_len=16)
    model = build_model(preset.replace(lcirc=dict(preset.lcirc, num_latents=4,
                                                  compressor_layers=1)), "cpu", torch.float32)
    assert type(model.base).__name__ == "Qwen2ForCausalLM"
    assert model.base.config.vocab_size == 300 and model.base.model.layers[0].self_attn.q_proj.bias is not None
    cfg.write_text(json.dumps({**fields, "model_type": "bert"}))
    with pytest.raises(ConfigError, match="'bert' is not supported"):
        get_preset(str(cfg))


@pytest.mark.parametrize("max_segments,rows", [(16, 96), (4, 64)])
def test_gemm_reference_has_the_largest_kv_products_shape(monkeypatch, max_segments, rows):
    """The GEMM the compressor is compared with has the shape of its largest K/V product."""
    from lcirc_fast.bench.presets import get_preset
    from lcirc_fast.bench.sweep import build_model, gemm_shape, sweep_ids
    from lcirc_fast.modules import PerceiverCompressor

    seen = []
    real = PerceiverCompressor._kv_product

    def product(xhat, w, bias, out=None):
        seen.append((xhat.numel() // xhat.shape[-1], xhat.shape[-1], w.shape[0]))
        return real(xhat, w, bias, out)

    monkeypatch.setattr(PerceiverCompressor, "_kv_product", staticmethod(product))
    preset = get_preset("tiny")
    model = build_model(preset, "cpu", torch.float32)
    model.configure(kv_hoist_max_segments=max_segments)
    n = 128                                       # 96 compressed tokens: 6 segments of 16
    with torch.no_grad():
        model.compress(sweep_ids(preset, n, 0, "cpu")[:, : n - preset.window])
    assert gemm_shape(model, preset, n) == max(seen) == (rows, 64, model.compressor.kv_width)
