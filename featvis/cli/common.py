"""Options shared by every subcommand: the MODEL forms, --weights, --device, --json."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import FeatvisError
from ..optvis import PRECISIONS
from ..model import FeatvisModel
from ..models import load_model

MODEL_HELP = (
    "inceptionv1 | inceptionv1_lucid | googlenet | squeezenet1_1 | efficientnet_lite2 | torchvision:NAME | pkg.module:factory | path/to/file.py:factory"
)


def add_model_args(parser: argparse.ArgumentParser, model_optional: bool = False) -> None:
    """Add MODEL (optional for a command with a model-less mode) and the options every subcommand shares."""
    parser.add_argument("model", metavar="MODEL", nargs="?" if model_optional else None, help=MODEL_HELP)
    parser.add_argument("--weights", metavar="PATH", help="weights: a state-dict file, or a folder of Caffe weights")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    parser.add_argument("--mean", type=_floats, metavar="R,G,B", help="input mean (RGB, for [0,1] images) of a user model")
    parser.add_argument("--std", type=_floats, metavar="R,G,B", help="input std (RGB) of a user model")


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0.485,0.456,0.406, got '{text}'") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers (R,G,B), got {len(values)}")
    return values


def model_from_args(args: argparse.Namespace, input_size: int | None = None, pretrained: bool = True) -> FeatvisModel:
    """Load the model the common options describe (``pretrained=False``: a built-in model's
    architecture only, unless --weights is given)."""
    try:
        import torch

        torch.device(args.device)
    except RuntimeError:
        raise FeatvisError(f"unknown device '{args.device}'; use cpu, cuda or cuda:N") from None
    return load_model(args.model, args.weights, args.device, mean=args.mean, std=args.std, input_size=input_size,
                      progress=sys.stderr.isatty(), pretrained=pretrained)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def add_precision_arg(parser: argparse.ArgumentParser) -> None:
    """``--precision``, shared by the commands that optimise images (render, gallery)."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="the model's number format while optimising (default auto: bfloat16 on CPUs with AMX, "
                             "else float32; activations are always reported in float32)")
