"""`lcirc compress`: a text file in, a compressed memory file out, with a summary.

Every argument (numbers, the input file, --out, --base, --lcirc) is checked before the model is
loaded, so a mistake is reported in a second rather than after a model load and a compression.
An existing --out is replaced only with --force, never through a symbolic link, and atomically
(the memory is written to a private temp directory beside it, then renamed over it).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time

from ..errors import CheckpointError, ConfigError, DataError
from .options import add_backend_option, apply_backend, check_backend

BUNDLED_BASE = "smollm2-135m"          # lcirc_fast.assets.SMOLLM2_NAME; alias 'smollm2'
MEMORY_SUFFIX = ".safetensors"
DEFAULT_NUM_LATENTS = 64
DEFAULT_MAX_SEGMENT_LEN = 4096
# LCIRCConfig fields that compress's flags set, named by the flag in LCIRCConfig's errors
FLAG_OF_FIELD = {"num_latents": "--num-latents", "max_segment_len": "--max-segment-len"}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compress", help="compress a text file into an LCIRC memory file",
                       description="Tokenise a text file, compress it with the LCIRC compressor "
                                   "and write a memory file (safetensors).")
    p.add_argument("input", help="UTF-8 text file to compress ('-' for stdin)")
    p.add_argument("--out", required=True, help="memory file to write (.safetensors)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    add_model_source(p)
    p.add_argument("--segment-len", type=int, default=None,
                   help="fixed segment length (default: the balanced ~2K rule)")
    p.add_argument("--max-segment-len", type=int, default=None,
                   help=f"longest segment of fresh weights (default {DEFAULT_MAX_SEGMENT_LEN}; "
                        "a trained --lcirc model has its own)")
    p.add_argument("--num-latents", type=int, default=None,
                   help=f"memory vectors per segment of fresh weights (default "
                        f"{DEFAULT_NUM_LATENTS}; a trained --lcirc model has its own)")
    add_backend_option(p)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="refuse inputs longer than this many tokens (default: no limit)")
    add_dtype(p)
    return p


DTYPES = ("float32", "bfloat16")


def add_model_source(p) -> None:
    """--base, --lcirc and --seed: which frozen base, and trained or fresh LCIRC weights (shared by
    compress, ask and serve)."""
    p.add_argument("--base", default=BUNDLED_BASE,
                   help=f"frozen base model: '{BUNDLED_BASE}' (bundled, offline) or a local Hugging "
                        "Face model directory of a supported family, with its tokenizer")
    p.add_argument("--lcirc", default=None,
                   help="directory written by save_pretrained with trained LCIRC weights "
                        "(default: fresh weights from --seed)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of fresh LCIRC weights (and of sampling, where there is any; default 0)")


def add_dtype(p) -> None:
    """--dtype of the base model and the LCIRC weights (shared by compress, ask and serve)."""
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="weights' dtype (default float32; bfloat16 is faster on CPUs with "
                        "avx512_bf16 and gives slightly different memories)")


# ---------------------------------------------------------------------- checks before loading
def check_numbers(args) -> None:
    """Refuse counts below 1 and shape options that a trained --lcirc model would ignore."""
    for flag, value in (("--num-latents", args.num_latents), ("--segment-len", args.segment_len),
                        ("--max-segment-len", args.max_segment_len),
                        ("--max-tokens", args.max_tokens)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be >= 1, got {value}")
    if args.lcirc:
        fixed = [flag for flag, value in (("--num-latents", args.num_latents),
                                          ("--max-segment-len", args.max_segment_len))
                 if value is not None]
        if fixed:
            raise ConfigError(f"{' and '.join(fixed)} shape fresh weights only; the model in "
                              f"--lcirc {args.lcirc} has its own, so drop {' and '.join(fixed)}")
    else:
        fresh_config(args)
        check_segment_len(args.segment_len, args.max_segment_len or DEFAULT_MAX_SEGMENT_LEN,
                          "--max-segment-len")


def flag_message(msg: str) -> str:
    """An LCIRCConfig error with its field names replaced by compress's flags: "num_latents =
    100000000: must be ..." reads "--num-latents 100000000: must be ..."."""
    for field, flag in FLAG_OF_FIELD.items():
        msg = re.sub(rf"(?:LCIRCConfig\.)?\b{field}\b(?:\s*=\s*)?", flag + " ", msg)
    return " ".join(msg.split())


def fresh_config(args):
    """The LCIRCConfig of fresh weights from --num-latents and --max-segment-len; its bounds are
    LCIRCConfig's, reported as ConfigError naming the flag."""
    from .. import LCIRCConfig

    try:
        return LCIRCConfig(num_latents=args.num_latents or DEFAULT_NUM_LATENTS,
                           max_segment_len=args.max_segment_len or DEFAULT_MAX_SEGMENT_LEN)
    except ConfigError as e:
        raise ConfigError(flag_message(str(e))) from None


def check_segment_len(segment_len: int | None, max_segment_len: int, limit: str) -> None:
    """Refuse a fixed segment length longer than the model's position table."""
    if segment_len is not None and segment_len > max_segment_len:
        raise ConfigError(f"--segment-len {segment_len} is longer than {limit} "
                          f"{max_segment_len}, the longest segment the model reads")


def check_input(path: str) -> None:
    """The input must be '-' or a readable file."""
    if path == "-":
        return
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; give a UTF-8 text file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"cannot read {path} (permission denied)")


def check_out(out: str, source: str, force: bool = False) -> None:
    """--out must be a new .safetensors file (an existing regular file with `force`) in a writable
    directory, not the input and not a symbolic link."""
    if source != "-" and os.path.exists(out) and os.path.samefile(out, source):
        raise ConfigError(f"--out {out} is the input file; writing the memory would overwrite "
                          f"the text, give another path ending in {MEMORY_SUFFIX}")
    if os.path.islink(out):
        raise ConfigError(f"--out {out} is a symbolic link (to {os.readlink(out)}); compress never "
                          f"writes through a link: give the path of a file")
    if os.path.isdir(out):
        raise IsADirectoryError(f"--out {out} is a directory; give a file path such as "
                                f"{os.path.join(out, 'memory' + MEMORY_SUFFIX)}")
    if not out.lower().endswith(MEMORY_SUFFIX):
        raise ConfigError(f"--out {out}: a memory file is written as safetensors and must end "
                          f"in {MEMORY_SUFFIX}, e.g. {os.path.splitext(out)[0]}{MEMORY_SUFFIX}")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.exists(parent):
        raise FileNotFoundError(f"--out {out}: directory {parent} does not exist")
    if not os.path.isdir(parent):
        raise NotADirectoryError(f"--out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: cannot write in directory {parent} "
                              "(permission denied)")
    if os.path.exists(out) and not os.path.isfile(out):
        raise ConfigError(f"--out {out} exists and is not a regular file")
    if os.path.exists(out) and not force:
        raise FileExistsError(f"--out {out} exists; pass --force to replace it, or give a new path")


def check_base(name: str) -> None:
    """--base must be the bundled model (or its alias) or a model directory of a supported
    family with a tokenizer; checked without loading weights."""
    from ..models.base_loader import canonical_base_name, check_base_dir

    if canonical_base_name(name) == BUNDLED_BASE:
        return
    if not os.path.isdir(name):
        raise ConfigError(f"--base {name!r} is neither the bundled '{BUNDLED_BASE}' nor a "
                          "model directory")
    check_base_dir(name, label="--base", tokenizer=True)


def check_lcirc(path: str | None) -> None:
    """--lcirc, when given, must be a directory written by save_pretrained."""
    if path is None:
        return
    from ..models.pretrained import CONFIG_NAME, WEIGHTS_NAME

    if not os.path.isdir(path):
        raise FileNotFoundError(f"--lcirc {path}: no such directory; give a directory written "
                                "by save_pretrained (training's best/ or final/)")
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not os.path.isfile(os.path.join(path, n))]
    if missing:
        raise CheckpointError(f"--lcirc {path} is not a save_pretrained directory: "
                              f"{' and '.join(missing)} missing")


def check_args(args) -> None:
    """Every check that needs no model, in the order the user wrote the arguments."""
    check_numbers(args)
    check_input(args.input)
    check_out(args.out, args.input, args.force)
    check_base(args.base)
    check_lcirc(args.lcirc)


# ---------------------------------------------------------------------- input and model
def decode_text(data: bytes, name: str) -> str:
    """UTF-8 text of `data`; a non-UTF-8 byte is refused, naming `name` and the byte's offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{name} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset "
                        f"{e.start} ({e.reason}); compress reads UTF-8 text files") from None


def read_text(path: str) -> str:
    """The non-empty text of `path` ('-': stdin), decoded as UTF-8."""
    if path == "-":
        stream = getattr(sys.stdin, "buffer", None)   # None: already a text stream
        text = sys.stdin.read() if stream is None else decode_text(stream.read(), "stdin")
    else:
        with open(path, "rb") as f:
            text = decode_text(f.read(), path)
    if not text.strip():
        raise DataError(f"{'stdin' if path == '-' else path} is empty; nothing to compress")
    return text


def check_tables_fit(config, hidden: int) -> None:
    """Refuse fresh weights whose latent and position tables ([num_latents, hidden] and
    [max_segment_len, hidden], float32) alone exceed this machine's memory, naming the flag of
    the larger table; LCIRCConfig's own bounds, when it has them, are checked before this."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    rows = {"num_latents": config.num_latents, "max_segment_len": config.max_segment_len}
    need = sum(rows.values()) * hidden * 4
    if need <= memory:
        return
    field = max(rows, key=rows.get)
    flag, value = FLAG_OF_FIELD[field], rows[field]
    default = DEFAULT_NUM_LATENTS if field == "num_latents" else DEFAULT_MAX_SEGMENT_LEN
    raise ConfigError(f"{flag} {value}: the latent and position tables ({rows['num_latents']} and "
                      f"{rows['max_segment_len']} rows of {hidden} float32 values) need {need / 2**30:,.0f} "
                      f"GiB, more than this machine's {memory / 2**30:,.0f} GiB of memory; use a smaller "
                      f"{flag} (default {default})")


def load_base(name: str, dtype: str = "float32"):
    """(model, tokenizer) for the bundled base or a local HF directory, in `dtype`."""
    import torch

    from ..models import load_base as load

    return load(name, getattr(torch, dtype))


def build_model(args):
    """(LCIRC model in eval mode, tokenizer): trained from --lcirc or fresh from --seed."""
    import torch

    from .. import LCIRCForCausalLM

    base, tok = load_base(args.base, getattr(args, "dtype", "float32"))
    torch.manual_seed(args.seed)           # the seed fixes the fresh LCIRC weights alone
    if args.lcirc:
        model = LCIRCForCausalLM.from_pretrained(args.lcirc, base=base)
        check_segment_len(args.segment_len, model.config.max_segment_len,
                          f"the max_segment_len of {args.lcirc}")
    else:
        config = fresh_config(args)
        check_tables_fit(config, int(base.config.hidden_size))
        model = LCIRCForCausalLM.from_base(base, config)
    return model.eval(), tok


def write_memory(mem, out: str, force: bool) -> None:
    """Write `mem` to `out` atomically: saved in a private temp directory beside `out`, then
    renamed over it (`force`) or linked to it (no `force`: fails if `out` appeared meanwhile)."""
    parent = os.path.dirname(os.path.abspath(out))
    tmpdir = tempfile.mkdtemp(prefix=".lcirc-compress-", dir=parent)
    try:
        tmp = os.path.join(tmpdir, "memory" + MEMORY_SUFFIX)
        mem.save(tmp)
        if force:
            os.replace(tmp, out)       # replaces a link itself, never the file it points to
            return
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise FileExistsError(f"--out {out} appeared while compressing; nothing was written: "
                                  f"pass --force to replace it, or give a new path") from None
        except OSError:                # a file system without hard links
            if os.path.lexists(out):
                raise FileExistsError(f"--out {out} appeared while compressing; nothing was "
                                      f"written: pass --force to replace it") from None
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def run(args) -> int:
    import torch

    check_args(args)
    check_backend(args.backend)
    text = read_text(args.input)
    model, tok = build_model(args)
    apply_backend(model, args.backend)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    n = ids.shape[1]
    if args.max_tokens is not None and n > args.max_tokens:
        raise DataError(f"{args.input} has {n} tokens, more than --max-tokens {args.max_tokens}")
    t0 = time.perf_counter()
    with torch.no_grad():
        mem = model.compress(ids, segment_len=args.segment_len)
    dt = max(time.perf_counter() - t0, 1e-9)
    write_memory(mem, args.out, args.force)
    print(f"input            {args.input}")
    print(f"context tokens   {n}")
    print(f"segments         {mem.num_segments}")
    print(f"memory tokens    {len(mem)} ({model.config.num_latents} per segment, "
          f"{n / max(len(mem), 1):.1f}x fewer than the context)")
    print(f"compress time    {dt:.2f} s ({n / dt:.0f} tokens/s)")
    print(f"weights          {'from ' + args.lcirc if args.lcirc else f'fresh (seed {args.seed})'}")
    print(f"written          {args.out}")
    return 0
