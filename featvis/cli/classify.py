"""`featvis classify MODEL IMAGE...`: top-k labels and probabilities."""

from __future__ import annotations

import argparse

from .common import add_model_args, model_from_args, positive_int, print_json


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("classify", help="top-k classes of photos")
    add_model_args(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="photos to classify (PNG, JPEG, ...; any size, any mode)")
    parser.add_argument("--top", type=positive_int, default=5, help="how many classes to show (default 5)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.images import load_image

    photos = [load_image(path) for path in args.images]  # read every image before loading the model
    model = model_from_args(args)
    results = [
        {"image": path, "top": [{"index": i, "label": label, "prob": prob} for i, label, prob in top]}
        for path, top in zip(args.images, model.classify(photos, top=args.top))
    ]
    if args.json:
        print_json(results)
        return 0
    for result in results:
        print(result["image"])
        for entry in result["top"]:
            print(f"  {entry['prob']:7.2%}  {entry['label']} ({entry['index']})")
    return 0
