"""`featvis saliency MODEL IMAGE --method M [--layer L] [--target T] [--sanity] -o map.png [--json]`."""

from __future__ import annotations

import argparse

from .._util.choices import LAYERED, METHODS, OVERLAYS
from .common import add_model_args, add_out_arg, check_figure_output, model_from_args, positive_int, print_json, show_progress


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("saliency", help="a saliency map of a photo, with deletion/insertion scores",
                                   description="Explain the model's decision on a photo. The figure shows the map, "
                                               "its RISE deletion/insertion curves and, with --sanity, Adebayo et al.'s "
                                               "cascading-randomization check.")
    add_model_args(parser)
    parser.add_argument("image", metavar="IMAGE", help="the photo (PNG, JPEG, ...)")
    parser.add_argument("--method", choices=list(METHODS), default="saliency", help="attribution method (default: saliency)")
    parser.add_argument("--layer", metavar="L", help="Grad-CAM layer (default: the last layer with spatial output)")
    parser.add_argument("--target", metavar="LABEL|INDEX", help="class to explain (default: the top-1 class)")
    parser.add_argument("--sanity", action="store_true", help="run the cascading model-randomization check too")
    add_out_arg(parser)
    parser.add_argument("--overlay", choices=OVERLAYS, help="map style (default: signed for ixg/ig/occlusion, else blend)")
    parser.add_argument("--steps", type=positive_int, default=50, help="integrated-gradients steps (default 50)")
    parser.add_argument("--samples", type=positive_int, default=25, help="SmoothGrad samples (default 25)")
    parser.add_argument("--noise", type=float, default=0.15, help="SmoothGrad noise, fraction of the input range (default 0.15)")
    parser.add_argument("--internal-batch-size", type=positive_int, default=16, metavar="N",
                        help="inputs per forward/backward pass for ig, smoothgrad and occlusion (default 16)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..core.figures import save_figure
    from ..core.images import load_image
    from ..saliency import saliency
    from ..saliency.sanity import cascading_randomization, deletion_insertion, report_figure

    check_figure_output(args.out)  # refuse a bad extension or path before any work
    photo = load_image(args.image)
    model = model_from_args(args)
    options = {"steps": args.steps, "samples": args.samples, "noise": args.noise,
               "internal_batch_size": args.internal_batch_size}
    result = saliency(model, photo, args.method, target=args.target, layer=args.layer, **options)
    x = result.image.unsqueeze(0)
    scores = deletion_insertion(model, x, result.map, result.target)
    steps = (cascading_randomization(model, x, args.method, target=result.target, layer=result.layer,
                                     progress=show_progress(args), **options) if args.sanity else [])
    path = save_figure(report_figure(result, scores, steps, args.overlay), args.out)
    if args.json:
        print_json({
            "method": args.method,
            "target": {"index": result.target, "label": result.label, "prob": result.prob},
            "path": str(path),
            "deletion_auc": scores.deletion_auc,
            "insertion_auc": scores.insertion_auc,
            "sanity": [step.to_dict() for step in steps],
        })
        return 0
    layer = f" at {result.layer}" if args.method in LAYERED else ""
    print(f"wrote {path}: {METHODS[args.method]}{layer} for '{result.label}' ({result.target}), p = {result.prob:.3f}")
    print(f"deletion AUC {scores.deletion_auc:.3f} (lower is better), insertion AUC {scores.insertion_auc:.3f} (higher is better)")
    for step in steps:
        print(f"  randomized to {step.layer:<16} Spearman {step.spearman:+.3f}  |map| {step.spearman_abs:+.3f}  SSIM {step.ssim:.3f}")
    return 0
