"""`featvis atlas`: an activation atlas (Carter et al. 2019) of one layer over a photo collection.

    featvis atlas MODEL --images SOURCE --layer mixed4c [--grid 20] [--samples N] -o atlas.png
        [--class LABEL] [--cell 64] [--steps 256] [--batch N] [--workers N] [--json]
"""

from __future__ import annotations

import argparse
import os

from .._util.errors import FeatvisError
from .common import add_model_args, add_out_arg, add_render_args, model_from_args, print_json, render_settings, show_progress
from ..optvis.settings import ATLAS_CELLS  # torch-free


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "atlas", help="activation atlas of a layer over a photo collection (needs featvis[atlas])",
        description="Sample activation vectors at random positions of the photos (one streaming pass, resumable), lay "
                    "them out in 2-D with UMAP, bin them on a grid and render each populated cell's mean vector; cells "
                    "are drawn with opacity by count. --class LABEL weights samples by attribution to that class.")
    add_model_args(parser)
    parser.add_argument("--images", metavar="SOURCE", required=True,
                        help="a folder of images (searched recursively) or a text file with one image path per line")
    parser.add_argument("--layer", required=True, help="the layer, e.g. mixed4c")
    parser.add_argument("--grid", type=int, default=20, help="cells per side (default 20)")
    parser.add_argument("--samples", type=int, default=20000, help="activation vectors to sample (default 20000)")
    add_out_arg(parser, what="atlas image, .png (FILE.json is written beside it)", metavar="FILE.png")
    parser.add_argument("--class", dest="target", metavar="LABEL", help="class atlas: weight samples by attribution to "
                                                                         "this class (a label or an index)")
    add_render_args(parser, ATLAS_CELLS, what="cell", size_flags=("--cell", "--size"))
    parser.add_argument("--batch", type=int, default=32, help="images per forward pass while sampling (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes (default 2)")
    parser.add_argument("--render-batch", type=int, default=16, help="cells rendered together (default 16)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._util.fileio import ensure_writable_dir
    from ..examples.atlas import activation_atlas, require_umap
    from ..examples.source import list_images

    require_umap()
    settings = render_settings(args)  # bad values refused before any work
    if not args.out.lower().endswith(".png"):
        raise FeatvisError(f"the atlas is saved as PNG; give -o a .png path, got {args.out}")
    ensure_writable_dir(os.path.dirname(args.out) or ".")
    list_images(args.images)  # fail before loading the model
    model = model_from_args(args)
    atlas = activation_atlas(model, args.images, args.layer, args.out, grid=args.grid, samples=args.samples,
                             target=args.target, settings=settings, batch=args.batch,
                             workers=args.workers, render_batch=args.render_batch, progress=show_progress(args))
    if args.json:
        print_json(atlas.summary)
    else:
        print(f"{args.out}  ({len(atlas.cells)} cells from {atlas.summary['samples']} samples of "
              f"{atlas.summary['images']} images)")
    return 0
