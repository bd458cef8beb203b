"""`lcirc serve`: an OpenAI-compatible HTTP server that compresses each document once and
answers many questions over it (see lcirc_fast.serving)."""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import ConfigError
from .ask import add_model_args, check_common, load_model


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("serve", help="serve an OpenAI-compatible API over compressed documents",
                       description="Serve /v1/completions, /v1/chat/completions, /v1/models and "
                                   "/v1/documents; a request with \"document\": \"<id>\" reads "
                                   "that document's memory.")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--store", default="lcirc-store",
                   help="directory of the stored documents (default ./lcirc-store)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $LCIRC_API_KEY; none: open)")
    p.add_argument("--max-batch", type=int, default=8, help="rows decoded together (8)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a batch waits after its first request for more (10 ms)")
    p.add_argument("--cache-bytes", type=int, default=1 << 30,
                   help="bytes of document memories kept in RAM (default 1 GiB)")
    p.add_argument("--max-body-bytes", type=int, default=8 << 20,
                   help="largest request body (default 8 MiB)")
    p.add_argument("--max-tokens-limit", type=int, default=1024,
                   help="largest max_tokens a request may ask (default 1024)")
    p.add_argument("--model-name", default=None, help="model id listed by /v1/models")
    return p


def check_args(args) -> None:
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")
    for flag, value, low in (("--max-batch", args.max_batch, 1), ("--cache-bytes", args.cache_bytes, 0),
                             ("--max-body-bytes", args.max_body_bytes, 1),
                             ("--max-tokens-limit", args.max_tokens_limit, 1)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if not 0 <= args.batch_wait_ms <= 10000:
        raise ConfigError(f"--batch-wait-ms must be in [0, 10000], got {args.batch_wait_ms}")
    if os.path.exists(args.store) and not os.path.isdir(args.store):
        raise NotADirectoryError(f"--store {args.store} exists and is not a directory")
    check_common(args)


def run(args) -> int:
    import torch
    import uvicorn

    from ..serving import Engine, EngineSettings
    from ..serving.app import create_app

    check_args(args)
    api_key = args.api_key or os.environ.get("LCIRC_API_KEY") or None
    threads = args.threads or torch.get_num_threads()
    # the main thread loads at one torch thread, so the engine's torch thread holds the process's
    # only OpenMP team (see lcirc_fast.serving.batcher)
    model, tok = load_model(args, "serve", threads=1)
    name = args.model_name or ("lcirc-" + os.path.basename(os.path.normpath(args.lcirc or args.base)))
    engine = Engine(model, tok, args.store, EngineSettings(
        max_batch=args.max_batch, cache_bytes=args.cache_bytes,
        max_tokens_limit=args.max_tokens_limit, model_name=name,
        batch_wait_s=args.batch_wait_ms / 1000, threads=threads))
    app = create_app(engine, api_key=api_key, max_body_bytes=args.max_body_bytes)
    print(f"lcirc serve: {name} on http://{args.host}:{args.port} (store {args.store}, "
          f"{'API key required' if api_key else 'no API key'})", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        engine.close()
    return 0
