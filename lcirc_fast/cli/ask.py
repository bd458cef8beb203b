"""`lcirc ask`: answer a question about a document, from its memory file or its text, printing
the answer as it is generated."""
from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError, DataError
from .compress import add_dtype, add_model_source, build_model, check_base, check_input, check_lcirc
from .options import add_backend_option, apply_backend, check_backend


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("ask", help="answer a question about a compressed document",
                       description="Answer a question with the memory of a document: a memory "
                                   "file written by `lcirc compress` (--memory) or a text file "
                                   "compressed now (--context; needed by QD-LCIRC models).")
    p.add_argument("question", help="the question")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--memory", help="memory file written by `lcirc compress` with this model")
    src.add_argument("--context", help="UTF-8 text file to compress and ask about ('-': stdin)")
    add_model_args(p)
    p.add_argument("--max-new-tokens", type=int, default=64, help="new tokens at most (64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    return p


def add_model_args(p) -> None:
    """--base, --lcirc, --seed, --threads, --dtype and --backend (shared with `lcirc serve`)."""
    add_model_source(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_dtype(p)
    add_backend_option(p)
    p.set_defaults(num_latents=None, max_segment_len=None, segment_len=None)


def check_common(args) -> None:
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    check_backend(args.backend)
    check_base(args.base)
    check_lcirc(args.lcirc)


def load_model(args, command: str, threads: int | None = None):
    """(model, tokenizer) of the arguments; a note on stderr when the weights are fresh.
    `threads`: the calling thread's torch thread count (default: --threads, if given)."""
    import torch
    from transformers.utils import logging

    threads = threads if threads is not None else args.threads
    if threads is not None:
        torch.set_num_threads(threads)
    logging.disable_progress_bar()           # stderr holds only the command's own lines
    model, tok = build_model(args)
    apply_backend(model, args.backend)
    if tok is None:
        raise ConfigError(f"--base {args.base} has no tokenizer; {command} needs one")
    if not args.lcirc:
        print(f"lcirc {command}: no --lcirc given, so the LCIRC weights are fresh (seed "
              f"{args.seed}) and untrained: answers do not use the document meaningfully",
              file=sys.stderr)
    return model, tok


def check_args(args) -> None:
    if not args.question.strip():
        raise ConfigError("the question is empty; pass the question as the last argument")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not args.temperature >= 0:
        raise ConfigError(f"--temperature must be >= 0 (0: greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p must be in (0, 1], got {args.top_p}")
    check_common(args)
    if args.memory is not None:
        check_input(args.memory)
    else:
        check_input(args.context)


def run(args) -> int:
    import torch

    from ..memory import CompressedMemory
    from ..models.decode_linears import use_few_row_linears
    from ..models.generation import stream
    from ..serving.engine import chat_prompt
    from .compress import read_text

    check_args(args)
    model, tok = load_model(args, "ask")
    qd = model.mixer is not None
    if qd and args.memory is not None:
        raise ConfigError("this is a QD-LCIRC model: its memory depends on the question, so a "
                          "stored memory cannot answer a new one; pass the text with --context")
    encode = lambda text: torch.tensor([tok(text, add_special_tokens=False).input_ids])  # noqa: E731
    question = encode(args.question)
    with torch.no_grad():
        if args.memory is not None:
            memory = CompressedMemory.load(args.memory, model)
        else:
            ids = encode(read_text(args.context))
            memory = model.compress(ids, query_ids=question if qd else None)
    use_few_row_linears(model)
    prompt = encode(chat_prompt(tok, [{"role": "user", "content": args.question}]))
    window = getattr(model.base.config, "max_position_embeddings", None)
    if window is not None and prompt.shape[1] + args.max_new_tokens > window:
        raise DataError(f"the question has {prompt.shape[1]} tokens; with --max-new-tokens "
                        f"{args.max_new_tokens} that passes the window of {window} tokens")
    gen = torch.Generator().manual_seed(args.seed)
    sample = args.temperature > 0
    out, shown = [], ""
    for nxt in stream(model, prompt, memory=memory, max_new_tokens=args.max_new_tokens,
                      do_sample=sample, temperature=args.temperature if sample else 1.0,
                      top_p=args.top_p if sample and args.top_p < 1 else None,
                      eos_token_id=tok.eos_token_id, generator=gen):
        tok_id = int(nxt[0])
        if tok_id == tok.eos_token_id:
            break
        out.append(tok_id)
        text = tok.decode(out, skip_special_tokens=True)
        if text.startswith(shown) and not text.endswith("\ufffd"):
            print(text[len(shown):], end="", flush=True)
            shown = text
    text = tok.decode(out, skip_special_tokens=True)
    print(text[len(shown):] if text.startswith(shown) else "", flush=True)
    return 0
