"""The `lcirc` command line: `lcirc <command> --help` for each command.

Errors are printed as one line, ``lcirc <command>: <what to fix>``, with a non-zero exit status
(2 bad input, usage errors included; 1 a failed run; 3 a bug; 130 interrupted); ``--debug``
(before the command) or ``LCIRC_DEBUG=1`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pickle
import re
import sys
import traceback

# command -> module under lcirc_fast.cli exposing add_parser(subparsers) and run(args) -> int
COMMANDS = {"compress": "compress", "bench": "bench", "train": "train", "eval": "eval", "convert": "convert"}

# exit statuses: 1 a run that failed (bad data, every sample failed), 2 bad input or arguments,
# 3 an unexpected internal error, 130 interrupted
EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 3, 130
ANSI_CODE = re.compile(r"\x1b\[[0-9;]*m")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, ``lcirc <command>: <what>;
    see lcirc <command> --help``, with exit status 2; ``--help`` still prints the full help.
    The subcommands' parsers are made by `add_subparsers`, which gives them this class too."""

    commands: tuple[str, ...] = ()       # the top parser's commands, set by build_parser

    def error(self, message: str):
        print(f"{self.prog}: {' '.join(message.split())}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="lcirc", description=__doc__,
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
    parser.commands = tuple(sub.choices)
    return parser


def one_line(err: BaseException) -> str:
    """The error's message on one line (newlines folded, terminal colour codes and the surrounding
    quotes of KeyError dropped)."""
    msg = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    msg = " ".join(ANSI_CODE.sub("", str(msg)).split())
    return msg or type(err).__name__


# bad input the user can fix: exit 2 (ValueError covers json, UnicodeDecodeError and every
# LCIRCError but RunError)
USAGE_ERRORS = (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
                FileExistsError, pickle.UnpicklingError)
# a run that could not finish: exit 1 (a full disk, too little memory, a diverging loss)
FAILED_ERRORS = (OSError, MemoryError, FloatingPointError)
# errors by module and class name, looked up only in modules already imported: parse errors of
# the user's files and a backend asked for where it cannot run (2); a kernel build that failed (1)
NAMED_ERRORS = (("yaml", "YAMLError", EXIT_USAGE), ("safetensors", "SafetensorError", EXIT_USAGE),
                ("lcirc_fast.ops.registry", "BackendUnavailableError", EXIT_USAGE),
                ("lcirc_fast._build_config", "ExtensionBuildError", EXIT_FAILED))
OUT_OF_MEMORY = ("can't allocate memory", "out of memory")


def is_out_of_memory(err: BaseException) -> bool:
    """torch's allocators report a failed allocation as a RuntimeError (OutOfMemoryError on CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    return isinstance(err, torch.OutOfMemoryError) or (
        type(err) is RuntimeError and any(s in str(err) for s in OUT_OF_MEMORY))


def named_status(err: BaseException) -> int | None:
    """The exit status NAMED_ERRORS gives `err`, or None."""
    for module, name, status in NAMED_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(err, cls):
            return status
    return None


def error_status(err: BaseException) -> tuple[int, str]:
    """(exit status, message) for an exception that reached the command line: 1 for a run that
    failed (RunError, a full disk, out of memory, a diverging loss, a kernel build), 2 for bad
    input (LCIRCError, ValueError, a missing or unreadable path, a pickle refused, a YAML or
    safetensors parse error, an unavailable backend), 3 for anything else: a bug."""
    from ..errors import LCIRCError, RunError

    if isinstance(err, RunError):
        return EXIT_FAILED, one_line(err)
    if isinstance(err, (LCIRCError, *USAGE_ERRORS)):
        return EXIT_USAGE, one_line(err)
    status = named_status(err)
    if status is not None:
        return status, one_line(err)
    if isinstance(err, FAILED_ERRORS):
        return EXIT_FAILED, one_line(err)
    if is_out_of_memory(err):
        return EXIT_FAILED, f"out of memory: {one_line(err)}"
    return EXIT_INTERNAL, (f"internal error: {type(err).__name__}: {one_line(err)} "
                           f"(run 'lcirc --debug ...' for the traceback)")


def debug_from_env() -> bool:
    """LCIRC_DEBUG set to anything but '', 0, false, no or off asks for tracebacks."""
    return os.environ.get("LCIRC_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def main(argv: list[str] | None = None) -> int:
    """Run `lcirc` with `argv` (default sys.argv[1:]) and return its exit status; usage errors
    and --help return too (2 and 0) instead of leaving the process."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as e:              # --help / --version (0) or OneLineParser.error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if unknown:                          # named with the command they were given to
        prog = f"lcirc {args.command}" if getattr(args, "command", None) else "lcirc"
        print(f"{prog}: unrecognized arguments: {' '.join(unknown)}; see {prog} --help", file=sys.stderr)
        return EXIT_USAGE
    if not getattr(args, "_run", None):
        print(f"lcirc: no command given; use one of {', '.join(parser.commands)} (see lcirc --help)",
              file=sys.stderr)
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
