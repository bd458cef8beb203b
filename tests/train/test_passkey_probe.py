"""The pass-key probe (train/passkey_probe.py) on the real SmolLM2 + KJV assets."""
import json
import random

import pytest
import torch
from lcirc_testutils import load_train_script


def _probe():
    return load_train_script("passkey_probe")


def test_schedule_parsing_and_lookup():
    p = _probe()
    s = p.parse_schedule("96@200, 32@0")
    assert s == [(0, 32), (200, 96)]
    assert [p.hay_at(s, k) for k in (0, 199, 200, 999)] == [32, 32, 96, 96]
    for bad in ("32@5", "x", "0", "32@-1", "32@a"):
        with pytest.raises(ValueError):
            p.parse_schedule(bad)
    with pytest.raises(SystemExit):
        p.parse_args(["--hay", "32@10"])
    with pytest.raises(SystemExit):
        p.parse_args(["--batch", "1"])


def test_key_lies_in_the_compressed_middle_with_fixed_shapes():
    from lcirc_fast.assets import load_smollm2
    from lcirc_fast.data import kjv_splits, tokenize_documents

    _, tok = load_smollm2(torch.float32)
    books = kjv_splits()["test"][:2]
    docs = list(zip([n for n, _ in books], tokenize_documents([t for _, t in books], tok)))
    src = _probe().KeyInMiddle(tok, docs, window=64)
    rng = random.Random(0)
    draws = [src.draw(rng, 40) for _ in range(6)]
    assert len({tuple(d[2].shape) for d in draws}) == 1
    for ids, labels, middle, query, key in draws:
        assert ids.shape == labels.shape == (64,)
        digits = tok(key, add_special_tokens=False).input_ids
        text = tok.decode(ids)
        assert key not in text.split("Answer:")[0]                   # not readable in the window
        assert tok.decode(middle).count(key) == 2                   # both mentions compressed
        assert tok.decode(labels[labels != -100]).strip() == key    # answer-only labels
        assert len(digits) == 5 and tok.decode(query).startswith("Question:")
    with pytest.raises(ValueError, match="too few"):
        src.draw(rng, 1, tries=3)


def test_probe_runs_a_step_reports_controls_and_saves(capsys, tmp_path):
    from lcirc_fast.models import LCIRCForCausalLM

    out = tmp_path / "model"
    assert _probe().main(["--steps", "1", "--batch", "2", "--eval-samples", "2", "--hay", "40",
                          "--eval-hay", "40", "--gate-init", "0", "--threads", "1",
                          "--save", str(out)]) == 0
    recs = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [r["step"] for r in recs] == [0, 1]
    r0 = recs[0]["40"]
    assert r0["own_nll"] == r0["swapped_nll"]           # closed gates: the memory is not read
    assert 0.0 <= r0["own_digit_acc"] <= 1.0 and r0["own_exact"] in (0.0, 0.5, 1.0)
    assert recs[1]["40"]["own_nll"] != r0["own_nll"]    # one step trained something
    from lcirc_fast.assets import load_smollm2

    base, _ = load_smollm2(torch.float32)
    model = LCIRCForCausalLM.from_pretrained(out, base=base)   # what `lcirc eval --lcirc` loads
    assert model.config.gca_layers == [2, 5, 8, 12] and model.config.num_latents == 32
    # --init-from resumes from the saved weights exactly (positions are not centred twice)
    assert _probe().main(["--steps", "0", "--eval-samples", "2", "--hay", "40", "--eval-hay", "40",
                          "--threads", "1", "--init-from", str(out)]) == 0
    again = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert again[0]["40"] == recs[1]["40"]


def _linear_probe():
    return load_train_script("memory_linear_probe")


def test_ridge_readout_finds_ordered_digits_only_when_they_are_there():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (400, 5), generator=g)
    ordered = torch.nn.functional.one_hot(y, 10).float().reshape(400, 50)
    bag = torch.nn.functional.one_hot(y, 10).float().sum(1)          # digits without their order
    noise = torch.randn(400, 50, generator=g)
    ro = _linear_probe().ridge_readout
    full = ro(ordered[:300], y[:300], ordered[300:], y[300:], lam=1.0)
    unordered = ro(bag[:300], y[:300], bag[300:], y[300:], lam=1.0)
    blind = ro(noise[:300], y[:300], noise[300:], y[300:], lam=1.0)
    assert min(full["by_pos"]) > 0.95 and full["bag"] > 0.95
    assert 0.15 < sum(unordered["by_pos"]) / 5 < 0.5 and unordered["bag"] > 0.95
    assert max(blind["by_pos"]) < 0.25 and blind["bag"] <= blind["bag_majority"] + 0.05


def test_linear_probe_runs_on_the_real_assets(capsys):
    assert _linear_probe().main(["--train", "6", "--test", "3", "--hay", "40", "--input-layers", "2"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["input_layers"] == 2 and len(rec["by_pos"]) == 5
    assert all(0.0 <= v <= 1.0 for v in rec["by_pos"])
    with pytest.raises(SystemExit):
        _linear_probe().parse_args(["--train", "1"])
