"""`lcirc compress` end to end on the bundled SmolLM2 and KJV text."""
import pytest
import torch

from lcirc_fast import CompressedMemory
from lcirc_fast.cli import main

pytestmark = pytest.mark.slow


def test_compress_writes_loadable_memory(tmp_path, capsys):
    from lcirc_fast.assets import kjv_text

    src = tmp_path / "genesis.txt"
    src.write_text(kjv_text()[:3000], encoding="utf-8")
    out = tmp_path / "genesis.safetensors"
    rc = main(["compress", str(src), "--out", str(out), "--segment-len", "128",
               "--max-segment-len", "256", "--num-latents", "8", "--seed", "3"])
    assert rc == 0 and out.exists()
    text = capsys.readouterr().out
    assert "segments" in text and "memory tokens" in text and "compress time" in text
    segments = int(next(line.split()[1] for line in text.splitlines()
                        if line.startswith("segments")))
    # the same fresh model (same seed) accepts the memory
    from lcirc_fast import LCIRCConfig, LCIRCForCausalLM
    from lcirc_fast.assets import load_smollm2

    base, _ = load_smollm2()
    torch.manual_seed(3)
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(num_latents=8, max_segment_len=256))
    mem = CompressedMemory.load(out, model)
    assert mem.num_segments == segments and len(mem) == 8 * segments


def test_compress_one_line_with_default_settings(tmp_path, capsys):
    """The README's first use: a short text, no options; one segment of 64 memory vectors."""
    src = tmp_path / "verse.txt"
    src.write_text("In the beginning God created the heaven and the earth.\n", encoding="utf-8")
    out = tmp_path / "verse.safetensors"
    assert main(["compress", str(src), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "segments         1" in text and "memory tokens    64" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verse.safetensors", "verse.txt"]
    from lcirc_fast import LCIRCConfig, LCIRCForCausalLM
    from lcirc_fast.assets import load_smollm2

    base, _ = load_smollm2()
    torch.manual_seed(0)
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig())
    mem = CompressedMemory.load(out, model)
    assert mem.num_segments == 1 and len(mem) == 64 and mem.state is not None


def test_compress_bad_input(tmp_path, capsys):
    out = str(tmp_path / "m.safetensors")
    assert main(["compress", str(tmp_path / "missing.txt"), "--out", out]) == 2
    assert capsys.readouterr().err == f"lcirc compress: no such file: {tmp_path}/missing.txt\n"
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    assert main(["compress", str(empty), "--out", out]) == 2
    assert capsys.readouterr().err == f"lcirc compress: {empty} is empty; nothing to compress\n"


def test_eval_modes_fit_the_task_and_the_model():
    from lcirc_fast.cli.eval import resolve_modes

    assert resolve_modes("passkey", None, False, False) == ["base"]
    assert resolve_modes("passkey", None, True, False) == ["base", "lcirc"]
    assert resolve_modes("passkey", None, True, True) == ["base", "qd"]       # never lcirc for a QD model
    assert resolve_modes("longbench", ["qd", "full"], True, True) == ["qd", "full"]
    assert resolve_modes("ppl", None, True, False) == ["base", "lcirc"]
    assert resolve_modes("ppl", ["base", "lcirc", "lcirc_swapped"], True, False)[-1] == "lcirc_swapped"
    assert resolve_modes("ppl", ["base", "full"], True, True) == ["base", "full"]
    with pytest.raises(ValueError, match="use qd"):
        resolve_modes("passkey", ["lcirc"], True, True)
    with pytest.raises(ValueError, match="without a mixer; use lcirc"):
        resolve_modes("passkey", ["qd"], True, False)
    with pytest.raises(ValueError, match="perplexity has none"):
        resolve_modes("ppl", None, True, True)
    with pytest.raises(ValueError, match="no question for qd"):
        resolve_modes("ppl", ["qd"], True, True)
    with pytest.raises(ValueError, match="need --lcirc"):
        resolve_modes("ppl", ["lcirc_swapped"], False, False)
    assert resolve_modes("passkey", ["lcirc", "lcirc_swapped"], True, False) == ["lcirc", "lcirc_swapped"]
    with pytest.raises(ValueError, match=r"\['lcirc_swapped'\] are not available for longbench"):
        resolve_modes("longbench", ["lcirc_swapped"], True, False)
    with pytest.raises(ValueError, match=r"\['lcirc_swapped'\] do not fit a QD-LCIRC model"):
        resolve_modes("passkey", ["lcirc_swapped"], True, True)
    with pytest.raises(ValueError, match="not available"):
        resolve_modes("passkey", ["fulll"], True, False)


def test_compress_error_after_loading_the_bundled_base_is_one_line(tmp_path, capfd):
    """Loading the bundled base prints no progress bar, and leaves transformers' setting as it was."""
    from transformers.utils import logging as hf_logging

    src = tmp_path / "verse.txt"
    src.write_text("In the beginning God created the heaven and the earth.\n", encoding="utf-8")
    bars = hf_logging.is_progress_bar_enabled()
    rc = main(["compress", str(src), "--out", str(tmp_path / "m.safetensors"), "--num-latents", "100000000000"])
    err = capfd.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("lcirc compress: --num-latents 100000000000: ")
    assert hf_logging.is_progress_bar_enabled() == bars
