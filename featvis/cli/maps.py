"""`featvis maps MODEL LAYER IMAGE [--top 16 | --channels 1,5,9] -o maps.png`: activations on a photo."""

from __future__ import annotations

import argparse

from .common import add_model_args, add_out_arg, check_figure_output, model_from_args, positive_int, print_json
from .filters import index_list


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("maps", help="a layer's feature maps on a photo")
    add_model_args(parser)
    parser.add_argument("layer", metavar="LAYER", help="a layer with channel maps, e.g. mixed4a")
    parser.add_argument("image", metavar="IMAGE", help="the photo (PNG, JPEG, ...)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--top", type=positive_int, default=16, help="show the K channels with the highest mean activation "
                                                            "(default 16)")
    choice.add_argument("--channels", type=index_list, metavar="I,J,...", help="show these channels")
    choice.add_argument("--overlay", type=int, metavar="CHANNEL",
                        help="instead, lay one channel over the photo by receptive-field centres")
    add_out_arg(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.figures import save_figure
    from ..core.images import load_image
    from ..inspect.feature_maps import feature_map_grid, feature_map_overlay, feature_maps, top_channels

    check_figure_output(args.out)  # refuse a bad extension or path before any work
    photo = load_image(args.image)
    model = model_from_args(args)
    x, maps = feature_maps(model, args.layer, photo)
    if args.overlay is not None:
        channels = [args.overlay]
        fig = feature_map_overlay(model, args.layer, x, args.overlay)
    else:
        channels = args.channels if args.channels is not None else top_channels(maps, args.top)
        fig = feature_map_grid(model, args.layer, x, channels=channels)
    path = save_figure(fig, args.out)
    if args.json:
        print_json({"path": str(path), "layer": args.layer, "shape": list(maps.shape), "channels": channels,
                    "mean": [float(maps[c].mean()) for c in channels]})
    else:
        print(f"wrote {path} ({args.layer}: channels {', '.join(map(str, channels))} of {maps.shape[0]})")
    return 0
