"""`featvis gallery`: a resumable, shardable static HTML gallery of a model's channels.

    featvis gallery MODEL --layers mixed3a,mixed4a --channels 0:16 --out DIR [--steps] [--size]
        [--batch] [--seed] [--images FOLDER] [--negative] [--diversity N] [--circuits [K]] [--shard i/N]
    featvis gallery --index-only DIR
"""

from __future__ import annotations

import argparse
import os

from .._util.choices import GALLERY_BATCH, GALLERY_PATCHES
from .._util.errors import FeatvisError
from .common import add_model_args, add_out_arg, add_render_args, model_from_args, print_json, render_settings, show_progress


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "gallery", help="render a static HTML gallery of channels (resumable, shardable)",
        description="Render every chosen channel's feature visualization into a static HTML site. Rerunning "
                    "skips finished work; shards (--shard i/N or torchrun's RANK/WORLD_SIZE) share one folder.")
    add_model_args(parser, model_optional=True)
    parser.add_argument("--layers", metavar="L1,L2", help="comma-separated layers, e.g. mixed3a,mixed4a")
    parser.add_argument("--channels", metavar="SEL", help="channels of each layer: A:B (B excluded), N, lists like "
                                                          "0:8,12, or all (default: all)")
    add_out_arg(parser, required=False, what="gallery folder (created; shared by all shards)", metavar="DIR")
    add_render_args(parser)
    parser.add_argument("--batch", type=int, default=GALLERY_BATCH,
                        help=f"channels optimised together in one batch (default {GALLERY_BATCH})")
    parser.add_argument("--images", metavar="FOLDER", help="your photos: show each channel's top-activating patches")
    parser.add_argument("--patches", type=int, default=GALLERY_PATCHES,
                        help=f"patches per channel with --images (default {GALLERY_PATCHES})")
    parser.add_argument("--negative", action="store_true", help="also render each channel's negative visualization")
    parser.add_argument("--diversity", type=int, default=0, metavar="N", help="also render a diversity set of N images")
    parser.add_argument("--circuits", type=int, nargs="?", const=8, default=0, metavar="K",
                        help="list each channel's K strongest inputs and outputs by expanded weight (default K: 8)")
    parser.add_argument("--no-filters", dest="filters", action="store_false", help="leave out the first-layer filters")
    parser.add_argument("--shard", metavar="i/N", help="render shard i of N (default: torchrun's RANK/WORLD_SIZE, else 0/1)")
    parser.add_argument("--index-only", metavar="DIR", help="only rebuild DIR's HTML from its manifests (after shards finish)")
    parser.set_defaults(func=run)


def _device(requested: str) -> str:
    """Under torchrun, ``--device cuda`` means this process's GPU (LOCAL_RANK)."""
    local_rank = os.environ.get("LOCAL_RANK")
    return f"cuda:{local_rank}" if requested == "cuda" and local_rank is not None else requested


def run(args: argparse.Namespace) -> int:
    if args.index_only and (args.model or args.out):
        raise FeatvisError("--index-only DIR takes no MODEL or --out; run `featvis gallery --index-only DIR`")
    missing = [name for name, value in (("MODEL", args.model), ("--layers", args.layers), ("--out", args.out)) if not value]
    if missing and not args.index_only:  # argument errors before any heavy import
        raise FeatvisError(f"missing {', '.join(missing)}; run `featvis gallery MODEL --layers L1,L2 --out DIR`")
    from .._util.fileio import ensure_writable_dir
    from ..gallery import make_gallery, parse_shard, rebuild_index

    if args.index_only:
        index = rebuild_index(args.index_only)
        if args.json:
            print_json({"index": str(index)})
        else:
            print(index)
        return 0
    shard = parse_shard(args.shard) if args.shard else None
    settings = render_settings(args)  # bad values refused before the model loads
    ensure_writable_dir(args.out)  # fail before loading the model
    args.device = _device(args.device)
    model = model_from_args(args)  # warnings (e.g. a photo skipped) print as one line each: see featvis.cli.main
    report = make_gallery(model, args.layers, args.out, settings, channels=args.channels,
                          batch=args.batch, images=args.images, patches=args.patches,
                          negative=args.negative, diversity=args.diversity, filters=args.filters, shard=shard,
                          progress=show_progress(args), circuits=args.circuits)
    if args.json:
        print_json(report.to_json())
    else:
        print(f"{report.index}  (shard {report.shard[0]}/{report.shard[1]}: {len(report.made)} items made, "
              f"{report.skipped} already done, {report.seconds:.1f} s)")
    return 0
