"""`lcirc compress` and `lcirc convert` never overwrite a file without --force, never write through
a symbolic link, and replace atomically (a failed write leaves the old file as it was)."""
import os
from types import SimpleNamespace

import pytest
import torch
from lcirc_testutils import tiny_lcirc, tiny_llama

from lcirc_fast.cli import EXIT_USAGE, main

VOCAB = 64


class ByteTokenizer:
    """Token ids from UTF-8 bytes modulo VOCAB: enough of a tokenizer for `lcirc compress`."""

    def __call__(self, text, return_tensors=None, add_special_tokens=False):
        return SimpleNamespace(input_ids=torch.tensor([[b % VOCAB for b in text.encode()]]))


def tiny_base_model(name=None, dtype="float32"):
    """A tiny random Llama (always the same weights) and a byte tokenizer; `load_base`'s signature."""
    return tiny_llama(vocab=VOCAB, hidden=16, layers=1, heads=2, kv_heads=1, ffn=32), ByteTokenizer()


@pytest.fixture
def tiny_base(monkeypatch):
    """compress's base model replaced by the tiny one."""
    monkeypatch.setattr("lcirc_fast.cli.compress.load_base", tiny_base_model)


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("In the beginning God created the heaven and the earth. " * 3, encoding="utf-8")
    return path


TINY = ["--num-latents", "2", "--max-segment-len", "32", "--segment-len", "16"]


def compress(*argv) -> int:
    return main(["compress", *map(str, argv), *TINY])


def error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"lcirc {command}: "), err
    return err.strip()


# ---------------------------------------------------------------------- lcirc compress
def test_compress_refuses_an_existing_out_without_force(tmp_path, text, capsys, tiny_base):
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"the model's weights")
    assert compress(text, "--out", out) == EXIT_USAGE
    assert f"--out {out} exists; pass --force to replace it" in error_line(capsys, "compress")
    assert out.read_bytes() == b"the model's weights"


def test_compress_force_replaces_atomically(tmp_path, text, capsys, tiny_base):
    from lcirc_fast import CompressedMemory, LCIRCConfig, LCIRCForCausalLM

    out = tmp_path / "m.safetensors"
    out.write_bytes(b"old")
    assert compress(text, "--out", out, "--force") == 0
    assert f"written          {out}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "text.txt"]   # no temp left
    base, _ = tiny_base_model()
    torch.manual_seed(0)                    # compress's --seed 0 makes the same fresh weights
    model = LCIRCForCausalLM.from_base(base, LCIRCConfig(num_latents=2, max_segment_len=32))
    mem = CompressedMemory.load(out, model)
    assert mem.num_segments == 11 and len(mem) == 22     # 168 bytes in segments of 16, 2 latents each


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_compress_never_writes_through_a_symlink(force, tmp_path, text, capsys, tiny_base):
    precious = tmp_path / "precious.safetensors"
    precious.write_bytes(b"precious")
    link = tmp_path / "m.safetensors"
    link.symlink_to(precious)
    assert compress(text, "--out", link, *force) == EXIT_USAGE
    assert f"--out {link} is a symbolic link (to {precious})" in error_line(capsys, "compress")
    assert precious.read_bytes() == b"precious" and link.is_symlink()
    dangling = tmp_path / "d.safetensors"
    dangling.symlink_to(tmp_path / "nowhere.safetensors")
    assert compress(text, "--out", dangling, *force) == EXIT_USAGE
    assert "is a symbolic link" in error_line(capsys, "compress")
    assert not (tmp_path / "nowhere.safetensors").exists()


class FailingMemory:
    def save(self, path):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    from lcirc_fast.cli.compress import write_memory

    out = tmp_path / "m.safetensors"
    out.write_bytes(b"old")
    with pytest.raises(OSError, match="No space left"):
        write_memory(FailingMemory(), str(out), force=True)
    assert out.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.safetensors"]


def test_out_that_appears_while_compressing_is_kept(tmp_path):
    from lcirc_fast.cli.compress import write_memory

    out = tmp_path / "m.safetensors"

    class Memory:
        def save(self, path):
            with open(path, "wb") as f:
                f.write(b"memory")
            out.write_bytes(b"written meanwhile")

    with pytest.raises(FileExistsError, match=f"--out {out} appeared while compressing; nothing was written"):
        write_memory(Memory(), str(out), force=False)
    assert out.read_bytes() == b"written meanwhile" and os.listdir(tmp_path) == ["m.safetensors"]


# ---------------------------------------------------------------------- lcirc convert
@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(tiny base model directory, reference-layout .pt checkpoint over it)."""
    root = tmp_path_factory.mktemp("convert")
    base = tiny_llama(vocab=VOCAB, hidden=16, layers=1, heads=2, kv_heads=1, ffn=32)
    base.save_pretrained(root / "base")
    model = tiny_lcirc(base, num_latents=2, compressor_layers=1, max_segment_len=32, segment_len=16)
    torch.save(model.official_state_dict(), root / "ref.pt")
    return str(root / "base"), str(root / "ref.pt")


def convert(reference, direction, src, out, *extra) -> int:
    return main(["convert", direction, "--base", reference[0], "--src", str(src), "--out", str(out), *extra])


def test_convert_force_replaces_a_file_with_a_directory(tmp_path, reference, capsys):
    out = tmp_path / "out"
    out.write_text("old")
    assert convert(reference, "to-pretrained", reference[1], out) == EXIT_USAGE
    assert "exists; pass a new path or --force" in error_line(capsys, "convert") and out.read_text() == "old"
    assert convert(reference, "to-pretrained", reference[1], out, "--force") == 0
    assert sorted(os.listdir(out)) == ["lcirc_config.json", "lcirc_model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["out"]
    # and again onto the save_pretrained directory it wrote
    assert convert(reference, "to-pretrained", reference[1], out, "--force") == 0
    assert sorted(os.listdir(tmp_path)) == ["out"] and len(os.listdir(out)) == 2


def test_convert_force_keeps_a_directory_of_other_files(tmp_path, reference, capsys):
    out = tmp_path / "hfmodel"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"weights")
    assert convert(reference, "to-pretrained", reference[1], out, "--force") == EXIT_USAGE
    line = error_line(capsys, "convert")
    assert f"--out {out} is a directory holding 1 other files (model.safetensors)" in line
    assert os.listdir(out) == ["model.safetensors"]


def test_convert_to_official_force_replaces_the_file(tmp_path, reference, capsys):
    directory = tmp_path / "d"
    assert convert(reference, "to-pretrained", reference[1], directory) == 0
    out = tmp_path / "back.pt"
    out.write_bytes(b"old")
    assert convert(reference, "to-official", directory, out, "--force") == 0
    got, want = torch.load(out, weights_only=True), torch.load(reference[1], weights_only=True)
    assert torch.equal(got["latent_state_dict"]["latent"], want["latent_state_dict"]["latent"])
    assert sorted(os.listdir(tmp_path)) == ["back.pt", "d"]


@pytest.mark.parametrize("direction", ["to-pretrained", "to-official"])
def test_convert_never_writes_through_a_symlink(direction, tmp_path, reference, capsys):
    precious = tmp_path / "precious.pt"
    precious.write_bytes(b"precious")
    link = tmp_path / "link"
    link.symlink_to(precious)
    src = reference[1] if direction == "to-pretrained" else tmp_path
    assert convert(reference, direction, src, link, "--force") == EXIT_USAGE
    assert f"--out {link} is a symbolic link" in error_line(capsys, "convert")
    assert precious.read_bytes() == b"precious" and link.is_symlink()


def test_convert_unknown_reference_key_is_bad_input(tmp_path, reference, capsys):
    ckpt = torch.load(reference[1], weights_only=True)
    ckpt["compressor_state_dict"]["layers.0.9.weight"] = torch.zeros(1)
    src = tmp_path / "odd.pt"
    torch.save(ckpt, src)
    assert convert(reference, "to-pretrained", src, tmp_path / "d") == EXIT_USAGE
    assert error_line(capsys, "convert") == (f"lcirc convert: {src} is not a reference LCIRC checkpoint: unknown key "
                                             "in compressor_state_dict: 'layers.0.9.weight'")
    assert not (tmp_path / "d").exists()
