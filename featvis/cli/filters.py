"""`featvis filters MODEL LAYER -o filters.png`: a convolution's kernels as a figure."""

from __future__ import annotations

import argparse

from .._util.choices import NORMALIZE
from .common import add_model_args, add_out_arg, check_figure_output, model_from_args, print_json


def index_list(text: str) -> list[int]:
    """argparse type for comma-separated indices such as ``1,5,9``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated indices like 1,5,9, got '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one index, like 1,5,9")
    return values


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("filters", help="draw a convolution's kernels (RGB grid for the first layer)")
    add_model_args(parser, input_size=False)
    parser.add_argument("layer", metavar="LAYER", help="a Conv2d layer or a block holding one, e.g. conv2d0")
    add_out_arg(parser)
    parser.add_argument("--filters", type=index_list, metavar="I,J,...", help="filters to show (default: all RGB "
                                                                                 "kernels, or the first 8)")
    parser.add_argument("--in-channels", type=index_list, metavar="I,J,...",
                        help="input channels of deeper kernels to show (default: the first 16)")
    parser.add_argument("--normalize", choices=NORMALIZE, default="filter",
                        help="scale each filter to its own range, or all to one (default: filter)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.figures import save_figure
    from ..inspect.filters import conv_layer, filter_grid

    check_figure_output(args.out)  # refuse a bad extension or path before any work
    model = model_from_args(args)
    fig = filter_grid(model, args.layer, args.filters, normalize=args.normalize, in_channels=args.in_channels)
    path = save_figure(fig, args.out)
    module, conv = conv_layer(model, args.layer)
    if args.json:
        print_json({"path": str(path), "layer": args.layer, "module": module, "shape": list(conv.weight.shape)})
    else:
        print(f"wrote {path} ({module}: {'x'.join(map(str, conv.weight.shape))} kernels)")
    return 0
