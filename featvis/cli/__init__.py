"""The `featvis` command line: thin wrappers that parse arguments and call the library.

Every subcommand lives in its own module (``featvis/cli/<command>.py``) with ``add_parser``;
building the parser imports no torch (``featvis --help`` and argument errors stay fast), commands
import the library inside ``run``. While a command runs, stdout carries only its own output.
User-fixable problems (FeatvisError) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from typing import Sequence

from ..errors import FeatvisError
from .streams import commands_own_stdout

COMMANDS = ["layers", "classify", "gallery", "render", "filters", "maps", "saliency", "rf"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="featvis", description="See what convolutional networks see.")
    parser.add_argument("--version", action="version", version=f"featvis {__import__('featvis').__version__}")
    # a command may define its own version of a shared option (e.g. -o): its definition wins
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       parser_class=functools.partial(argparse.ArgumentParser, conflict_handler="resolve"))
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``featvis`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        with commands_own_stdout():  # a user model's prints go to stderr, never into --json output
            return int(args.func(args) or 0)
    except FeatvisError as exc:
        print(f"featvis: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `featvis ... | head` closed the pipe: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("featvis: interrupted", file=sys.stderr)
        return 130
