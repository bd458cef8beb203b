"""The `lcirc` command line: `lcirc <command> --help` for each command.

Errors are printed as one line, ``lcirc <command>: <what to fix>``, with a non-zero exit status;
``--debug`` (before the command) or ``LCIRC_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

# command -> module under lcirc_fast.cli exposing add_parser(subparsers) and run(args) -> int
COMMANDS = {"compress": "compress", "bench": "bench", "train": "train", "eval": "eval", "convert": "convert"}
COMMANDS["ask"] = "ask"
COMMANDS["serve"] = "serve"

# exit statuses: 1 a run that failed (bad data, every sample failed), 2 bad input or arguments,
# 3 an unexpected internal error, 130 interrupted
EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lcirc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also LCIRC_DEBUG=1)")
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


def one_line(err: BaseException) -> str:
    """The error's message on one line (newlines folded, surrounding quotes of KeyError dropped)."""
    msg = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    msg = " ".join(str(msg).split())
    return msg or type(err).__name__


def error_status(err: BaseException) -> tuple[int, str]:
    """(exit status, message) for an exception that reached the command line."""
    from ..errors import LCIRCError, RunError

    if isinstance(err, RunError):
        return EXIT_FAILED, one_line(err)
    if isinstance(err, (LCIRCError, ValueError, FileNotFoundError, IsADirectoryError,
                        NotADirectoryError, PermissionError, FileExistsError)):
        return EXIT_USAGE, one_line(err)
    if isinstance(err, OSError):
        return EXIT_FAILED, one_line(err)
    return EXIT_INTERNAL, (f"internal error: {type(err).__name__}: {one_line(err)} "
                           f"(run 'lcirc --debug ...' for the traceback)")


def debug_from_env() -> bool:
    """LCIRC_DEBUG set to anything but '', 0, false, no or off asks for tracebacks."""
    return os.environ.get("LCIRC_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    debug = args.debug or debug_from_env()
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"lcirc {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit as e:
        if isinstance(e.code, str):           # SystemExit("message"): an error message
            print(f"lcirc {args.command}: {' '.join(e.code.split())}", file=sys.stderr)
            return EXIT_USAGE
        raise
    except Exception as e:  # noqa: BLE001 - the command line's single point of error reporting
        if debug:
            traceback.print_exc()
        status, msg = error_status(e)
        print(f"lcirc {args.command}: {msg}", file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
