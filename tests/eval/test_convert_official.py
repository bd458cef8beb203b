"""`lcirc convert` between the reference `.pt` layout and save_pretrained directories, and
`lcirc eval --official-checkpoint`."""
import json
from pathlib import Path

import pytest
import torch

from lcirc_fast.cli import main
from lcirc_fast.cli.convert import config_from_official

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def official_pt(tiny_hf_dirs, tmp_path_factory):
    """A reference-layout QD checkpoint with random weights and open gates, over the tiny base."""
    from lcirc_fast.models import LCIRCForCausalLM, load_base

    base, lcirc = tiny_hf_dirs
    model = LCIRCForCausalLM.from_pretrained(lcirc, base=load_base(base, tokenizer=False)[0])
    ckpt = model.official_state_dict()
    g = torch.Generator().manual_seed(3)
    for k, v in ckpt["compressor_state_dict"].items():
        ckpt["compressor_state_dict"][k] = torch.randn(v.shape, generator=g)
    path = tmp_path_factory.mktemp("official") / "LCIRC_checkpoint_epoch0_final.pt"
    torch.save(ckpt, path)
    return str(path), ckpt


def _flat(ckpt):
    return {f"{part}/{k}": v for part, sd in ckpt.items() if isinstance(sd, dict) for k, v in sd.items()}


def test_sizes_are_read_from_the_tensors(official_pt):
    _, ckpt = official_pt
    cfg = config_from_official(ckpt)
    assert (cfg.num_latents, cfg.compressor_layers, cfg.max_segment_len, cfg.query_dependent) == (2, 1, 256, True)
    del ckpt["compressor_state_dict"]["pos_emb"]
    with pytest.raises(Exception, match="not a reference LCIRC checkpoint: KeyError 'pos_emb'"):
        config_from_official(ckpt)


def test_round_trip_keeps_every_tensor(tmp_path, tiny_hf_dirs, official_pt, capsys):
    base, _ = tiny_hf_dirs
    path, _ = official_pt
    want = torch.load(path, weights_only=True)
    assert main(["convert", "to-pretrained", "--base", base, "--src", path, "--out", str(tmp_path / "d")]) == 0
    assert main(["convert", "to-official", "--base", base, "--src", str(tmp_path / "d"),
                 "--out", str(tmp_path / "back.pt")]) == 0
    got = torch.load(tmp_path / "back.pt", weights_only=True)
    a, b = _flat(want), _flat(got)
    assert sorted(a) == sorted(b)
    assert all(torch.equal(a[k].float(), b[k].float()) for k in a)
    assert "QD-LCIRC (K=2, 1 Perceiver layers" in capsys.readouterr().err
    rc = main(["convert", "to-official", "--base", base, "--src", str(tmp_path / "d"),
               "--out", str(tmp_path / "back.pt")])
    assert rc == 2 and "exists; pass a new path or --force" in capsys.readouterr().err


def test_eval_reads_the_official_checkpoint_like_its_converted_directory(tmp_path, tiny_hf_dirs, official_pt):
    base, _ = tiny_hf_dirs
    path, _ = official_pt
    assert main(["convert", "to-pretrained", "--base", base, "--src", path, "--out", str(tmp_path / "d")]) == 0
    common = ["eval", "leval", "--base", base, "--data", str(FIXTURES / "leval"), "--tasks", "narrative_qa",
              "--modes", "qd", "--window", "48", "--max-new-tokens", "3", "--segment-len", "16"]
    assert main([*common, "--official-checkpoint", path, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--lcirc", str(tmp_path / "d"), "--out", str(tmp_path / "b")]) == 0
    a = [json.loads(x) for x in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "b" / "predictions.jsonl").read_text().splitlines()]
    assert [p["generated"] for p in a] == [p["generated"] for p in b] and len(a) == 2


@pytest.mark.parametrize("extra, says", [
    (["--official-checkpoint", "no/such.pt"], "--official-checkpoint no/such.pt: no such file"),
    (["--official-checkpoint", __file__, "--lcirc", "."], "--lcirc and --official-checkpoint both give"),
])
def test_eval_refuses_bad_official_arguments(tmp_path, capsys, extra, says):
    rc = main(["eval", "leval", "--base", "tiny_random", "--data", str(FIXTURES / "leval"), *extra,
               "--out", str(tmp_path / "o")])
    assert rc == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["to-pretrained", "--src", "no/such.pt"], "--src no/such.pt: no such file"),
    (["to-official", "--src", "no/such/dir"], "--src no/such/dir: no such directory"),
])
def test_convert_refuses_missing_sources_in_one_line(tmp_path, capsys, argv, says):
    rc = main(["convert", *argv, "--base", "tiny_random", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"lcirc convert: {says}; ")


def test_convert_refuses_a_file_that_is_not_a_reference_checkpoint(tmp_path, capsys, tiny_hf_dirs):
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    rc = main(["convert", "to-pretrained", "--base", tiny_hf_dirs[0], "--src", str(bad), "--out", str(tmp_path / "o")])
    assert rc == 2 and "not a reference LCIRC checkpoint: KeyError 'latent_state_dict'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
