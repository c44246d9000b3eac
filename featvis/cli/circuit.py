"""`featvis circuit MODEL SPEC --from LAYER [--to LAYER] [--k 8] [-o circuit.png] [--json]`: a unit
explained by its strongest inputs (and outputs) through the expanded weights, as in the Circuits thread."""

from __future__ import annotations

import argparse
from pathlib import Path

from .._util.errors import FeatvisError
from .common import add_model_args, add_out_arg, add_render_args, model_from_args, print_json, render_settings, show_progress


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "circuit", help="a unit's strongest inputs and outputs by expanded weights, with their visualizations",
        description="SPEC is LAYER:CHANNEL (e.g. mixed3b:12). Inputs come from --from, outputs go to --to. "
                    "Without -o only the connections are printed (no rendering).")
    add_model_args(parser)
    parser.add_argument("spec", metavar="SPEC", help="the unit: LAYER:CHANNEL, e.g. mixed3b:12")
    parser.add_argument("--from", dest="source", required=True, metavar="LAYER", help="layer whose channels feed the unit")
    parser.add_argument("--to", dest="target", metavar="LAYER", help="layer whose channels the unit feeds")
    parser.add_argument("--k", type=int, default=8, help="connections per side (default 8)")
    parser.add_argument("--sign", choices=("any", "positive", "negative"), default="any",
                        help="rank by the norm of the whole weight (any), of its excitatory or inhibitory part")
    parser.add_argument("--photos", nargs="+", metavar="IMAGE",
                        help="attribution view: weight x mean activation over these photos (Microscope's attribution)")
    add_out_arg(parser, required=False, what="figure (.png, .svg or .pdf) with feature visualizations")
    add_render_args(parser, what="visualization")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._util.fileio import ensure_writable_dir
    from ..circuits.connections import top_connections
    from ..core.figures import figure_format
    from ..core.images import load_image

    if args.k < 1 or args.k > 64:
        raise FeatvisError(f"--k must be between 1 and 64, got {args.k}")
    settings = render_settings(args)  # bad values refused before any work
    if args.out:
        figure_format(args.out)  # a bad extension or folder fails before any work
        ensure_writable_dir(Path(args.out).parent)
    photos = [load_image(path) for path in args.photos] if args.photos else None
    model = model_from_args(args)
    connections = top_connections(model, args.spec, args.source, args.k, target=args.target, photos=photos,
                                  sign=None if args.sign == "any" else args.sign,
                                  progress=show_progress(args))  # a bar on a terminal, plain lines in a log
    path = _figure(model, connections, settings, args) if args.out else None
    if args.json:
        print_json(connections.to_dict())
        return 0
    for title, side in (("inputs from", connections.inputs), ("outputs to", connections.outputs)):
        if side:
            print(f"{connections.unit}: strongest {title} {side[0].layer}")
        for c in side:
            print(f"  {c.layer}:{c.channel}  strength {c.strength:.4g}  sum {c.sum:+.4g}")
    if path:
        print(f"wrote {path}")
    return 0


def _figure(model, connections, settings, args: argparse.Namespace):
    """Render the unit and every connection in one batch, then draw and save the figure."""
    from ..circuits.figure import circuit_figure
    from ..core.figures import save_figure
    from ..optvis import render

    ends = [(c.layer, c.channel) for c in connections.inputs + connections.outputs]
    specs = [connections.unit] + [f"{layer}:{channel}" for layer, channel in ends]
    results = render(model, specs, settings, batch=len(specs), strict=False, progress=show_progress(args))
    if len(results) < len(specs) or any(r.interrupted for r in results):
        raise KeyboardInterrupt
    images = {end: result.image for end, result in zip(ends, results[1:])}
    return save_figure(circuit_figure(connections, results[0].image, images), args.out)
