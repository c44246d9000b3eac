"""`featvis dictionary`: a sparse dictionary of a layer (TopK SAE), whose features then work as a layer.

    featvis dictionary MODEL --images SOURCE --layer LAYER [--features N] [--k K] [--samples S] [--out DIR]
        [--method topk|nmf] [--steps N] [--batch N] [--lr X] [--seed S] [--workers N] [--json]
"""

from __future__ import annotations

import argparse

from .common import add_model_args, add_out_arg, model_from_args, positive_int, print_json, show_progress


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "dictionary", help="train a sparse dictionary (TopK SAE) of a layer: features, not only neurons",
        description="Sample the layer's activation vectors at random positions of the photos (one streaming pass, "
                    "resumable; torchrun shares it out and trains with DDP), train a TopK sparse autoencoder (Gao et "
                    "al. 2024) and report the fraction of variance unexplained, L0, dead features and the loss "
                    "recovered. Then --dictionary DIR on any command adds the layer LAYER_features.")
    add_model_args(parser)
    parser.add_argument("--images", metavar="SOURCE", required=True,
                        help="a folder of images (searched recursively) or a text file with one image path per line")
    parser.add_argument("--layer", required=True, help="the layer, e.g. mixed4c (a convolutional layer)")
    parser.add_argument("--features", type=positive_int, metavar="N", help="dictionary size (default 4 per channel)")
    parser.add_argument("--k", type=positive_int, metavar="K", help="features active per position (default 32, below N/2)")
    parser.add_argument("--samples", type=positive_int, default=50_000, metavar="S",
                        help="activation vectors to sample (default 50000)")
    add_out_arg(parser, required=False, what="output folder (default dictionary-LAYER)", metavar="DIR")
    parser.add_argument("--method", choices=("topk", "nmf"), default="topk",
                        help="topk: the sparse autoencoder (default); nmf: non-negative factors, a baseline")
    parser.add_argument("--steps", type=positive_int, default=2000, help="training steps (default 2000)")
    parser.add_argument("--batch", type=positive_int, default=1024, help="vectors per training step (default 1024)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 0.001)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled positions and the training (default 0)")
    parser.add_argument("--image-batch", type=positive_int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=2, help="decoding worker processes (default 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._util.fileio import ensure_writable_dir
    from ..dictionary import train_dictionary
    from ..examples.source import list_images

    out = args.out or f"dictionary-{args.layer.replace('/', '_')}"
    ensure_writable_dir(out)  # fail before loading the model
    list_images(args.images)
    model = model_from_args(args)
    dictionary = train_dictionary(model, args.images, args.layer, args.features, args.k, args.samples, args.seed, out,
                                  method=args.method, steps=args.steps, batch=args.batch, lr=args.lr,
                                  image_batch=args.image_batch, workers=args.workers, progress=show_progress(args))
    info = dictionary.info
    summary = {"layer": dictionary.layer, "features": dictionary.features, "k": dictionary.k, "samples": info["samples"],
               "fvu": info["fvu"], "l0": info["l0"], "dead": info["dead"], "loss_recovered": info["loss_recovered"],
               "agreement": info["agreement"], "out": out, "name": dictionary.name, "method": dictionary.method,
               "images": info["images"], "processes": info["processes"],
               "polysemanticity": dictionary.polysemanticity().tolist()}
    if args.json:
        print_json(summary)
        return 0
    recovered = "n/a" if info["loss_recovered"] is None else f"{info['loss_recovered']:.3f}"
    agreement = "n/a" if info["agreement"] is None else f"{info['agreement']:.3f}"
    print(f"{out}  ({dictionary.features} features of {dictionary.layer}, k={dictionary.k}, {info['samples']} vectors: "
          f"FVU {info['fvu']:.4f}, L0 {info['l0']:.1f}, dead {info['dead']}, loss recovered {recovered}, "
          f"top-1 agreement {agreement}); use it with --dictionary {out} as layer {dictionary.name}")
    return 0
