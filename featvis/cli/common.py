"""Options shared by every subcommand: MODEL, --weights, --device, --input-size, --quiet, --json,
--mean/--std, --dictionary, and the one output option ``-o/--out``.

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
    from ..optvis.settings import RenderSettings

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
                        help="input mean (RGB, for [0,1] images; one value for a grayscale model, whose first conv reads "
                             "one channel); user models only (built-in models know theirs)")
    parser.add_argument("--std", type=_positive_floats, metavar="R,G,B", help="input std (RGB, or one value); user models only")
    parser.add_argument("--dictionary", action="append", metavar="DIR", default=[],
                        help="a dictionary from `featvis dictionary`: its features become the layer LAYER_features "
                             "(e.g. mixed4c_features:17), usable wherever a layer is; repeat for several layers")


def add_out_arg(parser: argparse.ArgumentParser, required: bool = True, what: str = "figure file: .png, .svg or .pdf",
                metavar: str = "FILE", group: Any = None) -> None:
    """``-o/--out`` (also spelled ``--output``, as before) into ``args.out``."""
    (group or parser).add_argument("-o", "--out", "--output", dest="out", required=required, metavar=metavar, help=what)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.485,0.456,0.406, got '{text}'") from None
    if len(values) not in (1, 3):
        raise argparse.ArgumentTypeError(f"expected three numbers (R,G,B), or one for a grayscale model, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers, got '{text}'")
    return values


def _positive_floats(text: str) -> tuple[float, ...]:
    """A std: three numbers, each > 0 (inputs are divided by them)."""
    values = _floats(text)
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"a std divides the input, so each value must be > 0, got '{text}'")
    return values


def _count(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type for a count that must be at least 1."""
    return _count(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type for a count that may be 0."""
    return _count(text, 0)


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
    model = load_model(args.model, args.weights, args.device, mean=args.mean, std=args.std,
                       input_size=getattr(args, "input_size", None), progress=show_progress(args), pretrained=pretrained)
    if getattr(args, "dictionary", None):
        from ..dictionary import attach_dictionary

        for folder in args.dictionary:
            model = attach_dictionary(model, folder)
    return model


def print_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout, in one write."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def add_render_args(parser: argparse.ArgumentParser, defaults: "RenderSettings | None" = None, *, what: str = "image",
                    steps_help: str | None = None, no_steps: bool = False, size_flags: tuple[str, ...] = ("--size",)) -> None:
    """The `RenderSettings` options (--steps, --size, --seed, --param, --no-decorrelate, --transforms,
    --precision), with the defaults of ``defaults`` (a door's own, e.g. explain's 80 px icons) and the
    choices of the settings module, for every command that optimises pictures. ``no_steps``: --steps 0
    is allowed (the command then makes no pictures); ``size_flags``: the spellings of --size (atlas: --cell)."""
    from ..optvis.settings import FULL_STEPS, PARAMS, TRANSFORMS, RenderSettings  # torch-free

    d = defaults or RenderSettings()
    parser.add_argument("--steps", type=non_negative_int if no_steps else positive_int, default=d.steps, metavar="N",
                        help=steps_help or f"optimisation steps per {what} (default {d.steps}"
                             + (", full quality; 128 gives a fair preview in a quarter of the time)" if d.steps == FULL_STEPS else ")"))
    parser.add_argument(*size_flags, dest="size", type=int, default=d.size, metavar="PX",
                        help=f"{what} side in px (default {d.size}; the model sees at least its input size)")
    parser.add_argument("--seed", type=int, default=d.seed, metavar="S", help=f"random seed (default {d.seed})")
    parser.add_argument("--param", choices=PARAMS, default=d.param,
                        help=f"image parameterisation (default {d.param}; maco: Fourier phase only, magnitude of natural photos)")
    parser.add_argument("--no-decorrelate", dest="decorrelate", action="store_false", default=d.decorrelate,
                        help="no ImageNet colour decorrelation")
    parser.add_argument("--transforms", choices=TRANSFORMS, default=d.transforms,
                        help=f"robustness transforms (default {d.transforms}: the article's)")
    parser.add_argument("--precision", choices=PRECISIONS, default=d.precision,
                        help="the model's number format while optimising (default auto: bfloat16 on CPUs with AMX or AVX512-BF16 "
                             "where its gradient agrees with float32's, else float32; activations are always reported in float32)")


def render_settings(args: argparse.Namespace, **changes: Any) -> "RenderSettings":
    """The `RenderSettings` the options of `add_render_args` give (``changes`` override them)."""
    from ..optvis.settings import RenderSettings

    return RenderSettings(**{"steps": args.steps, "size": args.size, "seed": args.seed, "param": args.param,
                             "decorrelate": args.decorrelate, "transforms": args.transforms, "precision": args.precision,
                             **changes})
