"""The command line's error contract: one line `lcirc <command>: <problem>` on stderr, a non-zero
exit status, no traceback (unless --debug or LCIRC_DEBUG=1); bad `lcirc compress` arguments
refused before any model is loaded."""
import io
import os
import pickle
import subprocess
import sys
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch
import yaml

from lcirc_fast.cli import EXIT_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_USAGE, main
from lcirc_fast.errors import RunError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_error_line(capsys, command: str) -> str:
    """The single stderr line of a failed command (asserting there is exactly one)."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"lcirc {command}: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def loads(monkeypatch):
    """Calls of the base-model loaders; each call fails the command."""
    calls = []

    def fake(*args, **kwargs):
        calls.append(args)
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("lcirc_fast.cli.compress.load_base", fake)
    monkeypatch.setattr("lcirc_fast.assets.load_smollm2", fake)
    return calls


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("In the beginning God created the heaven and the earth.\n", encoding="utf-8")
    return path


def compress(capsys, *argv) -> tuple[int, str]:
    rc = main(["compress", *map(str, argv)])
    return rc, one_error_line(capsys, "compress")


# ---------------------------------------------------------------------- lcirc compress
@pytest.mark.parametrize("data, offset, byte", [(b"\x00\xff\xfe binary", 1, "0xff"),
                                                (b"plain text, then \xe9t\xe9", 17, "0xe9")])
def test_compress_binary_input_names_file_and_offset(data, offset, byte, tmp_path, capsys, loads):
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    rc, line = compress(capsys, src, "--out", tmp_path / "m.safetensors")
    assert rc == EXIT_USAGE
    assert str(src) in line and f"offset {offset}" in line and byte in line
    assert "not UTF-8 text" in line and loads == []


def test_compress_binary_stdin(monkeypatch, tmp_path, capsys, loads):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok \xff")))
    rc, line = compress(capsys, "-", "--out", tmp_path / "m.safetensors")
    assert rc == EXIT_USAGE and "stdin is not UTF-8 text" in line and "offset 3" in line


def test_compress_out_directory_leaves_nothing_behind(tmp_path, text, capsys, loads):
    target = tmp_path / "outdir"
    target.mkdir()
    before = sorted(os.listdir(tmp_path))
    rc, line = compress(capsys, text, "--out", target)
    assert rc == EXIT_USAGE
    assert f"--out {target} is a directory" in line and "memory.safetensors" in line
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(target) == []
    assert loads == []


@pytest.mark.parametrize("out, message", [
    ("memory.bin", "must end in .safetensors, e.g. {tmp}/memory.safetensors"),
    ("missing/m.safetensors", "directory {tmp}/missing does not exist"),
    ("text.txt/m.safetensors", "{tmp}/text.txt is not a directory"),
    ("text.txt", "is the input file"),
])
def test_compress_bad_out_refused_before_loading(out, message, tmp_path, text, capsys, loads):
    rc, line = compress(capsys, text, "--out", tmp_path / out)
    assert rc == EXIT_USAGE
    assert message.format(tmp=tmp_path) in line
    assert loads == [] and text.read_text().startswith("In the beginning")


def test_compress_unwritable_out_directory(monkeypatch, tmp_path, text, capsys, loads):
    real_access = os.access
    def access(path, mode):
        return (not mode & os.W_OK or str(path) != str(tmp_path)) and real_access(path, mode)

    monkeypatch.setattr(os, "access", access)
    rc, line = compress(capsys, text, "--out", tmp_path / "m.safetensors")
    assert rc == EXIT_USAGE and f"cannot write in directory {tmp_path}" in line and loads == []


def test_compress_out_same_file_through_symlink(tmp_path, text, capsys, loads):
    link = tmp_path / "link.safetensors"
    link.symlink_to(text)
    rc, line = compress(capsys, text, "--out", link)
    assert rc == EXIT_USAGE and "is the input file" in line and loads == []


@pytest.mark.parametrize("flag", ["--num-latents", "--segment-len", "--max-segment-len",
                                  "--max-tokens"])
@pytest.mark.parametrize("value", ["0", "-3"])
def test_compress_counts_below_one_refused(flag, value, tmp_path, text, capsys, loads):
    rc, line = compress(capsys, text, "--out", tmp_path / "m.safetensors", flag, value)
    assert rc == EXIT_USAGE and f"{flag} must be >= 1, got {value}" in line and loads == []


@pytest.mark.parametrize("message, flagged", [
    ("num_latents = 100000000: must be <= 65536", "--num-latents 100000000: must be <= 65536"),
    ("max_segment_len = 1000000000000: must be <= 1048576 (the position table)",
     "--max-segment-len 1000000000000: must be <= 1048576 (the position table)"),
    ("LCIRCConfig.max_segment_len must be a positive int, got 0", "--max-segment-len must be a positive int, got 0"),
    ("segment_len = 9: must be <= max_segment_len", "segment_len = 9: must be <= --max-segment-len"),
])
def test_config_errors_name_compress_flags(message, flagged):
    from lcirc_fast.cli.compress import flag_message

    assert flag_message(message) == flagged


@pytest.fixture
def tiny_base(monkeypatch):
    """compress's base model: a tiny random Llama (hidden size 16) with a byte tokenizer."""
    from lcirc_testutils import tiny_llama

    def load(name):
        def tokenize(text, **kwargs):
            return SimpleNamespace(input_ids=torch.tensor([[b % 64 for b in text.encode()]]))
        return tiny_llama(vocab=64, hidden=16, layers=1, heads=2, kv_heads=1, ffn=32), tokenize

    monkeypatch.setattr("lcirc_fast.cli.compress.load_base", load)


@pytest.mark.parametrize("flag, value", [("--num-latents", "100000000000"), ("--max-segment-len", "1000000000000")])
def test_compress_sizes_beyond_bounds_name_the_flag(flag, value, tmp_path, text, capsys, tiny_base):
    """Refused by LCIRCConfig's bounds before loading, or by the memory the tables need."""
    rc, line = compress(capsys, text, "--out", tmp_path / "m.safetensors", flag, value)
    assert rc == EXIT_USAGE and line.startswith(f"lcirc compress: {flag} {value}: ")
    assert not (tmp_path / "m.safetensors").exists()


def test_compress_tables_beyond_memory(monkeypatch, tmp_path, text, capsys, tiny_base):
    from lcirc_fast.cli import compress as cli

    monkeypatch.setattr(cli.os, "sysconf", lambda name: 2**16)       # a machine of 4 GiB
    monkeypatch.setattr(cli, "fresh_config", lambda args: SimpleNamespace(num_latents=args.num_latents,
                                                                        max_segment_len=4096))
    rc, line = compress(capsys, text, "--out", tmp_path / "m.safetensors", "--num-latents", "100000000")
    assert rc == EXIT_USAGE
    assert line == ("lcirc compress: --num-latents 100000000: the latent and position tables (100000000 and "
                    "4096 rows of 16 float32 values) need 6 GiB, more than this machine's 4 GiB of memory; use "
                    "a smaller --num-latents (default 64)")


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "pytorch_model.bin.index.json"])
def test_compress_refuses_pickled_base_weights(weights, tmp_path, text, capsys):
    """A --base directory whose weights are a pickle is refused by name, exit 2, and not unpickled."""
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "llama"}')
    (base / "tokenizer.json").write_text("{}")
    marker = tmp_path / "ran"

    class Planted:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (base / weights).write_bytes(pickle.dumps({"w": Planted()}))
    rc, line = compress(capsys, text, "--out", tmp_path / "m.safetensors", "--base", base)
    assert rc == EXIT_USAGE
    assert f"--base {base} holds pickled weights ({weights})" in line and "wants safetensors" in line
    assert not marker.exists()


def test_compress_segment_longer_than_position_table(tmp_path, text, capsys, loads):
    rc, line = compress(capsys, text, "--out", tmp_path / "m.safetensors", "--segment-len", "300",
                        "--max-segment-len", "256")
    assert rc == EXIT_USAGE
    assert "--segment-len 300 is longer than --max-segment-len 256" in line and loads == []


def test_compress_base_neither_bundled_nor_directory(tmp_path, text, capsys, loads):
    rc, line = compress(capsys, text, "--out", tmp_path / "m.safetensors", "--base", "llama-9000")
    assert rc == EXIT_USAGE
    assert "--base 'llama-9000' is neither the bundled 'smollm2-135m' nor a model directory" in line
    rc, line = compress(capsys, text, "--out", tmp_path / "m.safetensors", "--base", tmp_path)
    assert rc == EXIT_USAGE and f"--base {tmp_path} has no config.json" in line
    (tmp_path / "config.json").write_text("{}")
    rc, line = compress(capsys, text, "--out", tmp_path / "m.safetensors", "--base", tmp_path)
    assert rc == EXIT_USAGE and f"--base {tmp_path} has a config.json but no weights" in line
    assert "model.safetensors" in line and loads == []


def test_compress_lcirc_directory_checked(tmp_path, text, capsys, loads):
    out = tmp_path / "m.safetensors"
    rc, line = compress(capsys, text, "--out", out, "--lcirc", tmp_path / "nowhere")
    assert rc == EXIT_USAGE and f"--lcirc {tmp_path}/nowhere: no such directory" in line
    empty = tmp_path / "empty_model"
    empty.mkdir()
    rc, line = compress(capsys, text, "--out", out, "--lcirc", empty)
    assert rc == EXIT_USAGE and "is not a save_pretrained directory" in line
    assert "lcirc_config.json and lcirc_model.safetensors missing" in line
    rc, line = compress(capsys, text, "--out", out, "--lcirc", empty, "--num-latents", "8")
    assert rc == EXIT_USAGE and "--num-latents shape fresh weights only" in line
    assert loads == [] and not out.exists()


def test_compress_input_directory(tmp_path, capsys, loads):
    rc, line = compress(capsys, tmp_path, "--out", tmp_path / "m.safetensors")
    assert rc == EXIT_USAGE and f"{tmp_path} is a directory; give a UTF-8 text file" in line


# ---------------------------------------------------------------------- lcirc bench
@pytest.mark.parametrize("argv, message", [
    (["--lengths", "12x", "--flops-only"], "--lengths: '12x' is not a token count"),
    (["--model", "llama-9000", "--flops-only"], "unknown model 'llama-9000'"),
    (["--device", "gpu", "--model", "tiny"], "--device 'gpu' is not a device; use cpu or cuda"),
])
def test_bench_bad_inputs(argv, message, tmp_path, capsys):
    rc = main(["bench", *argv, "--out", str(tmp_path)])
    assert rc == EXIT_USAGE and message in one_error_line(capsys, "bench")


def test_bench_out_is_a_file_refused_before_running(tmp_path, capsys):
    out = tmp_path / "bench.json"
    out.write_text("{}")
    rc = main(["bench", "--flops-only", "--lengths", "4k", "--out", str(out)])
    assert rc == EXIT_USAGE
    assert f"--out {out} exists and is not a directory" in one_error_line(capsys, "bench")
    assert out.read_text() == "{}"


def test_bench_runtime_failure_is_not_bad_input(monkeypatch, tmp_path, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr("lcirc_fast.cli.bench._flops_only", broken)
    rc = main(["bench", "--flops-only", "--out", str(tmp_path)])
    line = one_error_line(capsys, "bench")
    assert rc == EXIT_INTERNAL
    assert "internal error: RuntimeError: CUDA error: an illegal memory access" in line


def test_bench_model_too_big_for_memory_is_a_run_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr("lcirc_fast.cli.bench.os.sysconf", lambda name: 1)
    rc = main(["bench", "--model", "tiny", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == EXIT_FAILED
    assert "--model tiny needs about" in one_error_line(capsys, "bench")


# ---------------------------------------------------------------------- lcirc train
def test_train_bad_inputs(tmp_path, capsys):
    rc = main(["train", "--config", str(tmp_path / "missing.yaml")])
    assert rc == EXIT_USAGE and "missing.yaml" in one_error_line(capsys, "train")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("colour: blue\n")
    rc = main(["train", "--config", str(cfg)])
    line = one_error_line(capsys, "train")
    assert rc == EXIT_USAGE and "unknown key" in line and "colour" in line
    cfg.write_text("seed: 1\n")
    rc = main(["train", "--config", str(cfg), "--set", "nokey"])
    line = one_error_line(capsys, "train")
    assert rc == EXIT_USAGE and "nokey" in line and "key=value" in line


# ---------------------------------------------------------------------- lcirc eval
def test_eval_bad_inputs(tmp_path, capsys):
    out = str(tmp_path / "eval")
    rc = main(["eval", "ppl", "--base", "llama-9000", "--out", out])
    assert rc == EXIT_USAGE and "llama-9000" in one_error_line(capsys, "eval")
    rc = main(["eval", "passkey", "--base", "tiny_random", "--lcirc", str(tmp_path / "nowhere"),
               "--out", out])
    assert rc == EXIT_USAGE and "nowhere" in one_error_line(capsys, "eval")


@pytest.mark.parametrize("data", [b"garbage, not parquet", b"PAR1 not really parquet PAR1"])
def test_eval_garbage_parquet_is_one_line(data, tmp_path, capfd):
    """Nothing but the one line: the messages datasets/pyarrow would log are held back."""
    bad = tmp_path / "docs.parquet"
    bad.write_bytes(data)
    rc = main(["eval", "ppl", "--base", "tiny_random", "--data", str(bad), "--out", str(tmp_path / "o")])
    err = capfd.readouterr().err
    assert rc == EXIT_USAGE and len(err.splitlines()) == 1, err
    assert err.startswith(f"lcirc eval: cannot read {bad} as parquet: ")


@pytest.mark.parametrize("argv, says", [
    (["compress", "text.txt"], "the following arguments are required: --out"),
    (["compress", "t.txt", "--out", "m.safetensors", "--num-latents", "1e12"],
     "argument --num-latents: invalid int value: '1e12'"),
    (["compress", "t.txt", "--out", "m.safetensors", "--nope"], "unrecognized arguments: --nope"),
    (["eval", "ppl", "--multipliers", "x"], "argument --multipliers: expected a comma list of integers"),
    (["eval", "pp"], "argument task: invalid choice: 'pp'"),
    (["convert", "to-x", "--base", "b", "--src", "s", "--out", "o"], "argument direction: invalid choice"),
    (["convert", "to-official", "--base", "b"], "the following arguments are required: --src, --out"),
    (["train"], "the following arguments are required: --config"),
    (["train", "--config", "c.yaml", "--threads", "two"], "argument --threads: invalid int value: 'two'"),
    (["bench", "--repeats"], "argument --repeats: expected one argument"),
    (["bench", "--flops-only", "extra"], "unrecognized arguments: extra"),
])
def test_argparse_errors_are_one_line_with_exit_2(argv, says, capsys):
    assert main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    line = one_error_line_of(captured.err, argv[0])
    assert says in line and line.endswith(f"; see lcirc {argv[0]} --help"), line
    assert captured.out == ""


@pytest.mark.parametrize("argv, says", [
    (["bogus"], "lcirc: argument command: invalid choice: 'bogus'"),
    (["--nope"], "lcirc: unrecognized arguments: --nope; see lcirc --help"),
    ([], "lcirc: no command given; use one of compress, bench, train, eval, convert (see lcirc --help)"),
])
def test_top_level_usage_errors_are_one_line(argv, says, capsys):
    assert main(argv) == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [captured.err.strip()] and captured.err.startswith(says)
    assert captured.out == ""


@pytest.mark.parametrize("argv", [["--help"], ["compress", "--help"], ["convert", "-h"]])
def test_help_still_prints_the_full_help(argv, capsys):
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("usage: lcirc") and len(captured.out.splitlines()) > 5
    assert captured.err == ""


def one_error_line_of(err: str, command: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lcirc {command}: "), err
    return lines[0]


# ---------------------------------------------------------------------- the central handler
def boom(args):
    return 1 // 0


def test_unexpected_exception_is_internal_error(monkeypatch, capsys):
    monkeypatch.delenv("LCIRC_DEBUG", raising=False)
    monkeypatch.setattr("lcirc_fast.cli.compress.run", boom)
    assert main(["compress", "x.txt", "--out", "m.safetensors"]) == EXIT_INTERNAL
    line = one_error_line(capsys, "compress")
    assert "internal error: ZeroDivisionError" in line and "lcirc --debug" in line


@pytest.mark.parametrize("argv, env", [(["--debug"], None), ([], "1"), ([], "yes")])
def test_debug_shows_the_traceback(argv, env, monkeypatch, capsys):
    if env is None:
        monkeypatch.delenv("LCIRC_DEBUG", raising=False)
    else:
        monkeypatch.setenv("LCIRC_DEBUG", env)
    monkeypatch.setattr("lcirc_fast.cli.compress.run", boom)
    assert main([*argv, "compress", "x.txt", "--out", "m.safetensors"]) == EXIT_INTERNAL
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "1 // 0" in err
    assert err.splitlines()[-1].startswith("lcirc compress: internal error: ZeroDivisionError")


@pytest.mark.parametrize("env", ["0", "", "false", "off"])
def test_debug_env_off(env, monkeypatch, capsys):
    monkeypatch.setenv("LCIRC_DEBUG", env)
    monkeypatch.setattr("lcirc_fast.cli.compress.run", boom)
    assert main(["compress", "x.txt", "--out", "m.safetensors"]) == EXIT_INTERNAL
    assert "internal error" in one_error_line(capsys, "compress")


@pytest.mark.parametrize("error, status, message", [
    (RunError("every sample failed"), EXIT_FAILED, "every sample failed"),
    (KeyError("base.name"), EXIT_INTERNAL,
     "internal error: KeyError: base.name (run 'lcirc --debug ...' for the traceback)"),
    (ValueError("first line\nsecond line"), EXIT_USAGE, "first line second line"),
    (OSError(28, "No space left on device"), EXIT_FAILED, "[Errno 28] No space left on device"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted"),
    (SystemExit("stop: --foo is wrong"), EXIT_USAGE, "stop: --foo is wrong"),
    (pickle.UnpicklingError("Weights only load failed.\n\x1b[1mdo those steps\x1b[0m"), EXIT_USAGE,
     "Weights only load failed. do those steps"),
    (FileExistsError("--out m exists; pass --force"), EXIT_USAGE, "--out m exists; pass --force"),
    (MemoryError("cannot allocate"), EXIT_FAILED, "cannot allocate"),
    (FloatingPointError("loss is nan at step 3"), EXIT_FAILED, "loss is nan at step 3"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                  "you tried to allocate 230400000000 bytes."), EXIT_FAILED,
     "out of memory: [enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
     "you tried to allocate 230400000000 bytes."),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), EXIT_FAILED,
     "out of memory: CUDA out of memory. Tried to allocate 2 GiB"),
    (RuntimeError("shape mismatch"), EXIT_INTERNAL,
     "internal error: RuntimeError: shape mismatch (run 'lcirc --debug ...' for the traceback)"),
    (TypeError("unhashable type: 'list'"), EXIT_INTERNAL,
     "internal error: TypeError: unhashable type: 'list' (run 'lcirc --debug ...' for the traceback)"),
])
def test_error_classes_map_to_statuses(error, status, message, monkeypatch, capsys):
    def fail(args):
        raise error

    monkeypatch.setattr("lcirc_fast.cli.train.run", fail)
    assert main(["train", "--config", "c.yaml"]) == status
    assert one_error_line(capsys, "train") == f"lcirc train: {message}"


# ---------------------------------------------------------------------- a real process
@pytest.mark.parametrize("make, message", [
    (lambda: yaml.safe_load("a: [1, 2"), "while parsing a flow sequence"),
    (lambda: safetensors.torch.load(b"not a safetensors file"), "Error while deserializing"),
])
def test_parse_errors_of_user_files_are_bad_input(make, message, monkeypatch, capsys):
    def fail(args):
        make()

    monkeypatch.setattr("lcirc_fast.cli.train.run", fail)
    assert main(["train", "--config", "c.yaml"]) == EXIT_USAGE
    line = one_error_line(capsys, "train")
    assert message in line and "internal error" not in line


def test_backend_and_build_errors(monkeypatch, capsys):
    from lcirc_fast._build_config import ExtensionBuildError
    from lcirc_fast.ops.registry import BackendUnavailableError

    for error, status in ((BackendUnavailableError("no CUDA device; use --backend torch"), EXIT_USAGE),
                          (ExtensionBuildError("nvcc failed: see build.log"), EXIT_FAILED)):
        def fail(args, error=error):
            raise error

        monkeypatch.setattr("lcirc_fast.cli.train.run", fail)
        assert main(["train", "--config", "c.yaml"]) == status
        assert one_error_line(capsys, "train") == f"lcirc train: {error}"


@pytest.mark.parametrize("argv, message", [
    (["compress", "{tmp}/blob.bin", "--out", "{tmp}/m.safetensors"], "not UTF-8 text"),
    (["bench", "--flops-only", "--lengths", "0", "--out", "{tmp}/o"], "must be >= 1"),
    (["eval", "pp", "--out", "{tmp}/o"], "argument task: invalid choice: 'pp'"),
])
def test_subprocess_prints_one_line(argv, message, tmp_path):
    (tmp_path / "blob.bin").write_bytes(b"\x00\xff\xfe")
    env = {k: v for k, v in os.environ.items() if k != "LCIRC_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "lcirc_fast",
                           *(a.format(tmp=tmp_path) for a in argv)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lcirc {argv[0]}: "), proc.stderr
    assert message in lines[0] and "Traceback" not in proc.stderr
    assert proc.stdout == "" and not (tmp_path / "o").exists()

