"""The `featvis` command line: thin wrappers that parse arguments and call the library.

Every subcommand lives in its own module (``featvis/cli/<command>.py``) with ``add_parser``;
building the parser imports no torch (``featvis --help`` and argument errors stay fast), commands
import the library inside ``run``. While a command runs, stdout carries only its own output.
User-fixable problems (FeatvisError, bad arguments, an exception in the user's model code)
print one line on stderr and exit with code 2; Python warnings print as one line each;
Ctrl-C at any point, start-up included, prints one line and exits with code 130 (SIGTERM to
`featvis serve`: 143).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from typing import Sequence

from .._util.errors import FeatvisError, Terminated
from .._util.failures import routed_warnings, user_code_error
from .._util.heap import keep_freed_memory
from .streams import commands_own_stdout

COMMANDS = ["layers", "classify", "gallery", "render", "filters", "maps", "saliency", "rf", "circuit", "explain", "examples", "atlas", "dictionary", "describe", "serve"]


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (naming the fix) with exit code 2, like every featvis error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="featvis", description="See what convolutional networks see.")
    parser.add_argument("--version", action="version", version=f"featvis {__import__('featvis').__version__}")
    # a command may define its own version of a shared option (e.g. -o): its definition wins
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       parser_class=functools.partial(OneLineParser, conflict_handler="resolve"))
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def signal_exit(exc: BaseException) -> int:
    """Say that a command was stopped by Ctrl-C (exit code 130) or SIGTERM (143), in one line."""
    terminated = isinstance(exc, Terminated)
    print("featvis: terminated" if terminated else "featvis: interrupted", file=sys.stderr)
    return 143 if terminated else 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``featvis`` console script; returns the exit code."""
    try:
        with routed_warnings():
            args = build_parser().parse_args(argv)  # argparse's --help/--version text stays on stdout
            # a user model's prints go to stderr, never into --json output; freed tensors' memory is
            # reused, and not handed back at the end: the process ends there
            with commands_own_stdout(), keep_freed_memory(give_back=False):
                return int(args.func(args) or 0)
    except FeatvisError as exc:
        print(f"featvis: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `featvis ... | head` closed the pipe: not an error
        sys.stderr.close()
        return 0
    except (KeyboardInterrupt, Terminated) as exc:
        return signal_exit(exc)
    except Exception as exc:  # an exception in the user's model code is theirs to fix; anything else is a bug
        error = user_code_error(exc)
        if error is None:
            raise
        print(f"featvis: error: {error}", file=sys.stderr)
        return 2
