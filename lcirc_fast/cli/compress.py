"""`lcirc compress`: a text file in, a compressed memory file out, with a summary."""
from __future__ import annotations

import argparse
import os
import sys
import time


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("compress", help="compress a text file into an LCIRC memory file",
                       description="Tokenise a text file, compress it with the LCIRC compressor "
                                   "and write a memory file (safetensors).")
    p.add_argument("input", help="UTF-8 text file to compress ('-' for stdin)")
    p.add_argument("--out", required=True, help="memory file to write (.safetensors)")
    p.add_argument("--base", default="smollm2-135m",
                   help="frozen base model: 'smollm2-135m' (bundled, offline) or a local "
                        "Hugging Face model directory")
    p.add_argument("--lcirc", default=None,
                   help="directory written by save_pretrained with trained LCIRC weights "
                        "(default: freshly initialised weights from --seed)")
    p.add_argument("--segment-len", type=int, default=None,
                   help="fixed segment length (default: the balanced ~2K rule)")
    p.add_argument("--max-segment-len", type=int, default=4096)
    p.add_argument("--num-latents", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=None,
                   help="refuse inputs longer than this many tokens (default: no limit)")
    return p


def load_base(name: str):
    """(model, tokenizer) for 'smollm2-135m' or a local HF directory."""
    import torch

    if name == "smollm2-135m":
        from ..assets import load_smollm2
        return load_smollm2(torch.float32)
    if not os.path.isdir(name):
        raise SystemExit(f"lcirc: --base {name!r} is neither 'smollm2-135m' nor a directory")
    from transformers import AutoTokenizer, LlamaForCausalLM
    model = LlamaForCausalLM.from_pretrained(name, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(name, local_files_only=True)


def run(args) -> int:
    import torch

    from .. import LCIRCConfig, LCIRCForCausalLM

    if args.input == "-":
        text = sys.stdin.read()
    else:
        if not os.path.isfile(args.input):
            print(f"lcirc compress: no such file: {args.input}", file=sys.stderr)
            return 2
        with open(args.input, encoding="utf-8") as f:
            text = f.read()
    if not text.strip():
        print(f"lcirc compress: {args.input} is empty; nothing to compress", file=sys.stderr)
        return 2
    base, tok = load_base(args.base)
    torch.manual_seed(args.seed)           # the seed fixes the fresh LCIRC weights alone
    if args.lcirc:
        model = LCIRCForCausalLM.from_pretrained(args.lcirc, base=base)
    else:
        cfg = LCIRCConfig(num_latents=args.num_latents, max_segment_len=args.max_segment_len)
        model = LCIRCForCausalLM.from_base(base, cfg)
    model.eval()
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    n = ids.shape[1]
    if args.max_tokens is not None and n > args.max_tokens:
        print(f"lcirc compress: input has {n} tokens, more than --max-tokens {args.max_tokens}",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with torch.no_grad():
        mem = model.compress(ids, segment_len=args.segment_len)
    dt = time.perf_counter() - t0
    mem.save(args.out)
    print(f"input            {args.input}")
    print(f"context tokens   {n}")
    print(f"segments         {mem.num_segments}")
    print(f"memory tokens    {len(mem)} ({model.config.num_latents} per segment, "
          f"{n / max(len(mem), 1):.1f}x fewer than the context)")
    print(f"compress time    {dt:.2f} s ({n / dt:.0f} tokens/s)")
    print(f"weights          {'from ' + args.lcirc if args.lcirc else f'fresh (seed {args.seed})'}")
    print(f"written          {args.out}")
    return 0
