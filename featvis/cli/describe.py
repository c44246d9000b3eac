"""`featvis describe`: a short description of units and dictionary features, from the model itself.

    featvis describe MODEL SPEC... [--images SOURCE] [--top 5] [--dictionary DIR] [--json]
"""

from __future__ import annotations

import argparse

from .common import add_model_args, model_from_args, positive_int, print_json, printable, show_progress


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "describe", help="describe units in the model's own words: the classes they promote and their top photos' classes",
        description="SPEC is LAYER:CHANNEL (e.g. mixed4c:17, or mixed4c_features:5 with --dictionary). Each unit gets "
                    "the classes it promotes most (its summed logit gradient: over the first photos of --images, else "
                    "through the linearized network) and, with --images, the classes the model predicts for its top "
                    "dataset examples. With a dictionary of the layer, the features that load on a neuron, and the "
                    "neurons a feature loads on.")
    add_model_args(parser)
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="units: LAYER:CHANNEL")
    parser.add_argument("--images", metavar="SOURCE", help="a folder of photos (searched recursively) or a list file")
    parser.add_argument("--top", type=positive_int, default=5, help="classes listed per kind of evidence (default 5)")
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes (default 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..examples.source import check_loader_args, list_images
    from ..explain.describe import describe

    check_loader_args(1, args.workers)
    if args.images:
        list_images(args.images)  # fail before loading the model
    model = model_from_args(args)
    descriptions = describe(model, args.specs, args.images, top=args.top, workers=args.workers,
                            progress=show_progress(args))
    if args.json:
        print_json([d.to_dict() for d in descriptions])
        return 0
    for description in descriptions:
        print(f"{printable(description.unit)}: {printable(description.text)}")
        loads = description.loads
        if loads and "polysemanticity" in loads:
            print(f"  {loads['polysemanticity']} features of {loads['layer']} load on it: "
                  + ", ".join(map(str, loads["features"][:12])))
        elif loads:
            print(f"  loads on neurons of {loads['layer']}: " + ", ".join(map(str, loads["neurons"][:12])))
    return 0
