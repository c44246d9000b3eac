"""`featvis examples`: each channel's top images over a photo collection of any size (resumable, shardable).

    featvis examples MODEL --images SOURCE --layers L1,L2 [--channels SEL] [--k 9] --out DIR
        [--batch N] [--workers N] [--negative] [--shard i/N] [--full] [--json]
    featvis examples --merge DIR [--json]
"""

from __future__ import annotations

import argparse

from .._util.errors import FeatvisError
from .common import add_model_args, add_out_arg, model_from_args, print_json, show_progress


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "examples", help="each channel's top-activating images in a photo collection (streaming, resumable, shardable)",
        description="Stream a folder (searched recursively) or a list of image paths once through the model and keep, "
                    "for every channel, the k images whose strongest unit fires highest, with the unit, its activation, "
                    "its receptive-field box and the crop as PNG. Rerun the same command after a kill to continue; "
                    "shards (--shard i/N or torchrun's RANK/WORLD_SIZE) share one --out, joined by --merge DIR.")
    add_model_args(parser, model_optional=True)
    parser.add_argument("--images", metavar="SOURCE", help="a folder of images (searched recursively) or a text file "
                                                           "with one image path per line")
    parser.add_argument("--layers", metavar="L1,L2", help="comma-separated layers, e.g. mixed4c,mixed4a_pre_relu")
    parser.add_argument("--channels", metavar="SEL", help="channels of each layer: A:B (B excluded), N, lists like "
                                                          "0:8,12, or all (default: all)")
    parser.add_argument("--k", type=int, default=9, help="images per channel (default 9)")
    add_out_arg(parser, required=False, what="output folder: JSON per layer, crops as PNG (shared by all shards)", metavar="DIR")
    parser.add_argument("--batch", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes (default 2; 0: decode in this process)")
    parser.add_argument("--negative", action="store_true", help="also the k most negative images (use a pre-ReLU layer)")
    parser.add_argument("--shard", metavar="i/N", help="process every N-th image from i (default: torchrun's "
                                                       "RANK/WORLD_SIZE, else 0/1)")
    parser.add_argument("--full", action="store_true", help="also save each example's whole image with the box drawn")
    parser.add_argument("--no-crops", dest="crops", action="store_false",
                        help="store numbers only (path, unit, box, activation), no crop PNGs: a pass over a large "
                             "collection writes one JSON file per layer")
    parser.add_argument("--checkpoint-every", type=float, default=60.0, metavar="SECONDS",
                        help="seconds between checkpoints (default 60)")
    parser.add_argument("--merge", metavar="DIR", help="join the finished shards' results in DIR into the final files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.merge and (args.model or args.images or args.out):
        raise FeatvisError("--merge DIR takes no MODEL, --images or --out; run `featvis examples --merge DIR`")
    missing = [name for name, value in (("MODEL", args.model), ("--images", args.images), ("--layers", args.layers),
                                        ("--out", args.out)) if not value]
    if args.full and not args.crops:
        raise FeatvisError("--full saves whole images beside the crops; drop --no-crops or --full")
    if missing and not args.merge:  # checked before torch is imported
        raise FeatvisError(f"missing {', '.join(missing)}; run `featvis examples MODEL --images SOURCE --layers L1,L2 "
                           "--out DIR`")
    from .._util.fileio import ensure_writable_dir
    from ..examples import dataset_examples, merge_examples
    from ..examples.engine import MAX_K
    from ..examples.source import list_images
    from ..gallery import parse_shard
    from .gallery import _device

    if args.merge:
        result = merge_examples(args.merge, workers=args.workers, progress=show_progress(args))
    else:
        if not 1 <= args.k <= MAX_K:  # before loading the model
            raise FeatvisError(f"--k must be between 1 and {MAX_K}, got {args.k}")
        shard = parse_shard(args.shard) if args.shard else None
        ensure_writable_dir(args.out)  # fail before loading the model
        list_images(args.images)
        args.device = _device(args.device)
        model = model_from_args(args)
        result = dataset_examples(model, args.images, args.layers, args.out, channels=args.channels, k=args.k,
                                  batch=args.batch, workers=args.workers, negative=args.negative, shard=shard,
                                  full=args.full, checkpoint_every=args.checkpoint_every, progress=show_progress(args),
                                  crops=args.crops)
    if args.json:
        print_json(result.to_json())
    elif result.merged:
        layers = ", ".join(result.summary["layers"])
        print(f"{result.out / 'examples.json'}  ({result.summary['images']} images read, "
              f"{len(result.summary['skipped'])} skipped; layers {layers})")
    else:
        print(f"shard {result.shard[0]}/{result.shard[1]} done in {result.out}; after every shard finishes, run "
              f"`featvis examples --merge {result.out}`")
    return 0
