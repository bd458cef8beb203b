"""The RULER training configs: the QD/LCIRC pair differs in nothing but the QD switch, and the
RULER recipe builds and trains (two steps) through `lcirc train`'s path on a tiny model."""
import copy
from pathlib import Path

import pytest
import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "train" / "configs"


def _yaml(name):
    return yaml.safe_load((CONFIGS / name).read_text())


def test_the_qd_and_lcirc_configs_differ_only_in_query_dependence():
    qd, plain = _yaml("smollm2_kjv_ruler_cap_qd.yaml"), _yaml("smollm2_kjv_ruler_cap_lcirc.yaml")
    assert qd["lcirc"].pop("query_dependent") is True and plain["lcirc"].pop("query_dependent") is False
    assert qd.pop("output_dir") != plain.pop("output_dir")
    assert qd == plain
    assert len(qd["data"]["qa_tasks"]) > 1 and "niah_multiquery" in qd["data"]["qa_tasks"]
    assert qd["lcirc"]["num_latents"] < qd["data"]["segment_max"]       # fewer vectors than segment tokens


def test_the_ruler_config_starts_from_a_pass_key_model_it_fits():
    ruler, passkey = _yaml("smollm2_kjv_ruler.yaml"), _yaml("smollm2_kjv_passkey_probe.yaml")
    assert ruler["init_from"].startswith("runs/smollm2_kjv_passkey_probe") and ruler["init_from"].endswith("/final")
    shape = ("num_latents", "compressor_layers", "max_segment_len", "gca_layers", "compressor_input_layers",
             "query_dependent")
    assert {k: ruler["lcirc"][k] for k in shape} == {k: passkey["lcirc"][k] for k in shape}
    assert ruler["base"] == passkey["base"]


@pytest.mark.parametrize("half", ["lcirc", "qd"])
def test_the_capacity_pair_starts_from_the_pass_key_model_at_its_memory_size(half):
    cap, passkey = _yaml(f"smollm2_kjv_ruler_cap_{half}.yaml"), _yaml("smollm2_kjv_passkey_probe_cap.yaml")
    assert cap["init_from"] == passkey["output_dir"] + "/final"
    shape = ("num_latents", "compressor_layers", "max_segment_len", "segment_len", "gca_layers",
             "compressor_input_layers")
    assert {k: cap["lcirc"][k] for k in shape} == {k: passkey["lcirc"][k] for k in shape}
    assert passkey["lcirc"]["query_dependent"] is False          # QD's mixer starts fresh on top
    assert cap["base"] == passkey["base"] and cap["seed"] == passkey["seed"]
    probe = _yaml("smollm2_kjv_passkey_probe.yaml")               # the §13 recipe but for the size
    for section in ("train", "init"):
        a = probe[section] if section == "train" else probe["lcirc"]["init"]
        b = passkey[section] if section == "train" else passkey["lcirc"]["init"]
        assert a == b
    differ = {k for k in probe["data"] if probe["data"][k] != passkey["data"][k]}
    assert differ == {"segment_min", "segment_max"}


@pytest.fixture(scope="module")
def tiny_base_dir(tmp_path_factory):
    from lcirc_testutils import tiny_llama

    from lcirc_fast.assets import llama_sp_tokenizer

    d = tmp_path_factory.mktemp("base")
    tiny_llama(vocab=32000, hidden=16, layers=2, heads=2, kv_heads=1, ffn=32).save_pretrained(d)
    llama_sp_tokenizer().save_pretrained(d)
    return str(d)


@pytest.mark.parametrize("name, eval_every", [("smollm2_kjv_ruler.yaml", 2), ("smollm2_kjv_ruler_cap_qd.yaml", 0)])
def test_ruler_config_trains_two_steps_on_a_tiny_model(name, eval_every, tiny_base_dir, tmp_path):
    import json
    import math

    import torch

    from lcirc_fast.training import config_from_dict, run_training

    torch.manual_seed(0)
    d = copy.deepcopy(_yaml(name))
    d["output_dir"] = str(tmp_path / "run")
    d["init_from"] = None                       # the pass-key model does not fit the tiny base
    d["base"] = {"name": tiny_base_dir, "dtype": "float32"}
    d["lcirc"].update(num_latents=2, compressor_layers=1, gca_layers=[1], compressor_input_layers=1)
    d["data"].update(qa_context=[330, 360], hay_schedule=None, qa_val_lengths=[330], val_docs=1)
    d["train"].update(max_steps=2, batch_size=1, eval_every=eval_every, save_every=2, log_every=0)
    run_training(config_from_dict(d), resume="none", quiet=True)
    logs = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "loss" in r]
    assert [r["step"] for r in steps][-1] == 2 and all(math.isfinite(r["loss"]) for r in steps)
    if eval_every:
        assert any(math.isfinite(r.get("validation", {}).get("val_loss", math.nan)) for r in logs)
    assert (tmp_path / "run" / "final").is_dir()
