"""Options shared by every subcommand: MODEL, --weights, --device, --input-size, --quiet, --json,
--mean/--std, and the one output option ``-o/--out``.

This module and every command's ``add_parser`` import nothing heavy: ``featvis --help`` and
argument errors never import torch. Commands import the library inside their ``run``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING, Any

from .._util.choices import PRECISIONS
from .._util.errors import FeatvisError
from .._util.fileio import check_output_file  # standard library only: no torch at parser-building time

if TYPE_CHECKING:
    from ..models.wrapper import FeatvisModel

BUILTIN_MODELS = ("inceptionv1", "googlenet", "squeezenet1_1")
MODEL_HELP = (
    "inceptionv1 | inceptionv1_lucid | googlenet | squeezenet1_1 | efficientnet_lite2 | torchvision:NAME | pkg.module:factory | path/to/file.py:factory"
)


def add_model_args(parser: argparse.ArgumentParser, model_optional: bool = False, input_size: bool = True) -> None:
    """Add MODEL (optional for a command with a model-less mode) and the options every subcommand shares."""
    parser.add_argument("model", metavar="MODEL", nargs="?" if model_optional else None, help=MODEL_HELP)
    parser.add_argument("--weights", metavar="PATH", help="weights: a state-dict file, or a folder of Caffe weights")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    if input_size:
        parser.add_argument("--input-size", type=positive_int, default=None, metavar="PX",
                            help="side in pixels photos are resized to for the model (default: the model's, 224)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout (and nothing else)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or progress lines on stderr")
    parser.add_argument("--mean", type=_floats, metavar="R,G,B",
                        help="input mean (RGB, for [0,1] images); user models only (built-in models know theirs)")
    parser.add_argument("--std", type=_positive_floats, metavar="R,G,B", help="input std (RGB); user models only")


def add_out_arg(parser: argparse.ArgumentParser, required: bool = True, what: str = "figure file: .png, .svg or .pdf",
                metavar: str = "FILE", group: Any = None) -> None:
    """``-o/--out`` (also spelled ``--output``, as before) into ``args.out``."""
    (group or parser).add_argument("-o", "--out", "--output", dest="out", required=required, metavar=metavar, help=what)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.485,0.456,0.406, got '{text}'") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers (R,G,B), got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got '{text}'")
    return values


def _positive_floats(text: str) -> tuple[float, ...]:
    """A std: three numbers, each > 0 (inputs are divided by them)."""
    values = _floats(text)
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"a std divides the input, so each value must be > 0, got '{text}'")
    return values


def positive_int(text: str) -> int:
    """argparse type for a count that must be at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def check_figure_output(path: str) -> None:
    """Refuse, before any work, a figure path with a bad extension or naming a folder."""
    from ..core.figures import figure_format  # matplotlib only for the commands that draw

    figure_format(path)
    check_output_file(path)


def printable(text: str) -> str:
    """``text`` with control characters escaped (a layer name holding a newline stays on its line)."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to show progress: unless --quiet (progress goes to stderr, so --json output stays clean)."""
    return not getattr(args, "quiet", False)


def model_from_args(args: argparse.Namespace, pretrained: bool = True) -> "FeatvisModel":
    """Load the model the common options describe (``pretrained=False``: a built-in model's
    architecture only, unless --weights is given)."""
    from ..models import load_model  # checks --device (featvis.devices.check_device) before building anything

    if args.model in BUILTIN_MODELS and (args.mean is not None or args.std is not None):
        raise FeatvisError(f"--mean/--std set a user model's normalisation; {args.model} has its own, drop them")
    return load_model(args.model, args.weights, args.device, mean=args.mean, std=args.std,
                      input_size=getattr(args, "input_size", None), progress=show_progress(args), pretrained=pretrained)


def print_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout, in one write."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def add_precision_arg(parser: argparse.ArgumentParser) -> None:
    """``--precision``, shared by the commands that optimise images (render, gallery)."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the model's number format while optimising (default auto: bfloat16 on CPUs with AMX or AVX512-BF16, "
                             "else float32; activations are always reported in float32)")
