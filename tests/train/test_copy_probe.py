"""The copy-task probe (train/copy_probe.py) on the real SmolLM2 + KJV assets, one tiny step."""
import json

import pytest
from lcirc_testutils import load_train_script


def _probe():
    return load_train_script("copy_probe")


def _run(capsys, *args):
    assert _probe().main(["--steps", "1", "--batch", "2", "--passage-len", "8", "--eval-passages", "8",
                          "--threads", "1", *args]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_probe_closed_gates_is_the_base_model_then_trains(capsys):
    recs = _run(capsys)
    assert [r["step"] for r in recs] == [0, 1]
    r0 = recs[0]
    assert r0["own"] == r0["swapped"] == r0["none"] and r0["gates"] == [0.0] * 4
    assert r0["spread"] > 0.1  # a fresh compressor's memory depends on the passage
    assert any(g != 0.0 for g in recs[1]["gates"])  # one Adam step moved the gates


def test_probe_open_gates_make_the_memory_content_matter(capsys):
    recs = _run(capsys, "--gate-init", "0.5", "--gca-q-scale", "4", "--contrast", "1.0",
                "--grad-centering", "--center-positions")
    assert recs[0]["own"] != recs[0]["swapped"]


def test_probe_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        _probe().parse_args(["--eval-passages", "12"])
    with pytest.raises(SystemExit):
        _probe().parse_args(["--batch", "1", "--contrast", "1"])
