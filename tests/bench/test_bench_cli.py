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
                        "--decode-tokens", "2", "--out", str(tmp_path)]))
    assert rc == 0
    out = capsys.readouterr().out
    assert "FLOPs LCIRC" in out and "crossover" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    rows = data["rows"]
    assert [r["tokens"] for r in rows] == [32, 80]
    short, long = rows
    assert short["memory"] == 0 and "decode_cached_tok_s" not in short
    assert long["segments"] == 3 and long["memory"] == 12   # 48 tokens in 16-token segments
    for key in ("lcirc_s", "full_s", "reference_s", "decode_cached_tok_s",
                "decode_recompute_tok_s", "train_s", "flops_train"):
        assert long[key] > 0, key
    assert long["flops_lcirc_half"] < long["flops_full_half"]
    assert short["flops_lcirc_half"] == short["flops_full_half"]
    assert data["meta"]["versions"]["torch"] == torch.__version__
    png = (tmp_path / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


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
