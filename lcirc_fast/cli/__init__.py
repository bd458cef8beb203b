"""The `lcirc` command line: `lcirc <command> --help` for each command."""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> module under lcirc_fast.cli exposing add_parser(subparsers) and run(args) -> int
COMMANDS = {"compress": "compress", "bench": "bench", "train": "train", "eval": "eval"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcirc", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as e:
            if e.name == f"{__name__}.{module}":
                continue  # command not shipped in this build
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
