"""`featvis render MODEL SPEC...`: feature visualisations as PNGs, with activation, natural-photo ratio
and plausibility; MACO (``--param maco``, transparency with ``--alpha``) and feature accentuation
(``--accentuate PHOTO``)."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .._util.errors import FeatvisError
from .common import add_model_args, add_out_arg, add_render_args, model_from_args, positive_int, print_json, render_settings, show_progress

if TYPE_CHECKING:
    import torch

GRID_GAP = 4  # px of white between images in a grid


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("render", help="feature visualisation: images that maximise units, channels, layers, classes",
                                   description="SPEC: mixed4a:97 (channel), mixed4a:97@7,7 (neuron at row,col), -mixed4a:97 "
                                               "(negative; -mixed4a_pre_relu:97 before the ReLU), mixed4a (DeepDream), "
                                               "fc:954 or class:banana (class logit).")
    add_model_args(parser)
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="what to visualise (see above)")
    add_render_args(parser)
    parser.add_argument("--batch", type=positive_int, default=None, metavar="N", help="images per optimisation (default 16)")
    parser.add_argument("--init", metavar="IMAGE", help="start from this photo instead of noise")
    parser.add_argument("--thresholds", type=_steps, metavar="64,256,512", help="also save the images at these steps")
    parser.add_argument("--alpha", action="store_true",
                        help="also save MACO's transparency map (accumulated gradient) as <stem>_alpha.png (--param maco)")
    parser.add_argument("--accentuate", metavar="IMAGE", help="feature accentuation: start from this photo and stay close to it")
    parser.add_argument("--accentuate-layer", metavar="LAYER", help="layer in which to stay close (default: each spec's own)")
    parser.add_argument("--accentuate-distance", type=float, metavar="D",
                        help="largest relative distance ||A(x) - A(photo)|| / ||A(photo)|| in that layer (default 0.5)")
    out = parser.add_mutually_exclusive_group(required=True)
    add_out_arg(parser, required=False, what="one PNG (a grid when several specs)", metavar="OUT.png", group=out)
    out.add_argument("--out-dir", metavar="DIR", help="one PNG per spec in DIR")
    parser.set_defaults(func=run)
    # argparse reads "-mixed4a:97" as an unknown option; like a negative number, a dash followed by
    # a letter that is no known option (-o, -h) is a negative spec here (set after the options are added)
    parser._negative_number_matcher = re.compile(r"^-(\d|\.\d|[A-Za-z_])")


def _steps(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step numbers like 64,256,512, got '{text}'") from None


def slug(spec: str) -> str:
    """A file name stem for a spec: ``-mixed4a:97@7,7`` -> ``neg_mixed4a_97_7_7``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", re.sub(r"^-", "neg_", spec.strip())).strip("_") or "spec"


def image_grid(images: "list[torch.Tensor]") -> "torch.Tensor":
    """Images [3, s, s] side by side on white in a near-square grid."""
    import torch

    from ..core.figures import grid_shape

    rows, cols = grid_shape(len(images))
    side = images[0].shape[-1] + GRID_GAP
    grid = torch.ones(3, rows * side - GRID_GAP, cols * side - GRID_GAP)
    for i, image in enumerate(images):
        top, left = (i // cols) * side, (i % cols) * side
        grid[:, top : top + image.shape[1], left : left + image.shape[2]] = image
    return grid


def _paths(args: argparse.Namespace) -> list[Path]:
    """Final output path per spec (unique names in --out-dir); checks the folder is writable first."""
    from .._util.fileio import check_output_file, ensure_writable_dir
    from ..core.images import image_format

    if args.out:
        image_format(args.out)  # refuse a bad extension before any work
        paths = [Path(args.out)] * len(args.specs)
    else:
        folder = ensure_writable_dir(args.out_dir)
        seen: dict[str, int] = {}
        paths = []
        for spec in args.specs:
            stem = slug(spec)
            seen[stem] = seen.get(stem, 0) + 1
            paths.append(folder / (f"{stem}.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}.png"))
    for path in dict.fromkeys(paths):
        for target in [path, _partial(path), *(_at_step(path, step) for step in args.thresholds or ())]:
            check_output_file(target)
    return paths


def _at_step(path: Path, step: int) -> Path:
    return path.with_name(f"{path.stem}-step{step}{path.suffix or '.png'}")


def _partial(path: Path) -> Path:
    """Where an interrupted render's last images go: beside ``path``, never over it."""
    return path.with_name(f"{path.stem}.partial{path.suffix or '.png'}")


def _check(args: argparse.Namespace) -> None:
    """Combinations that cannot work, refused before anything is loaded."""
    if args.param == "maco" and (args.init or args.accentuate):
        raise FeatvisError(f"--param maco cannot start from a photo (its magnitude is fixed); drop {'--init' if args.init else '--accentuate'} "
                           "or use --param fft")
    if args.alpha and args.param != "maco":
        raise FeatvisError(f"--alpha needs a parameterisation with a transparency map; --param {args.param} has none, use --param maco")
    if args.init and args.accentuate:
        raise FeatvisError("give --init (a start photo) or --accentuate (a photo to stay close to), not both")
    if (args.accentuate_layer or args.accentuate_distance is not None) and not args.accentuate:
        raise FeatvisError("--accentuate-layer and --accentuate-distance need --accentuate IMAGE")
    if args.accentuate_distance is not None and not args.accentuate_distance > 0:
        raise FeatvisError(f"--accentuate-distance must be > 0, got {args.accentuate_distance}")


def alpha_path(path: Path) -> Path:
    """Where the transparency map of the image at ``path`` goes: the image's stem plus ``_alpha``."""
    return path.with_name(f"{path.stem}_alpha.png")


def run(args: argparse.Namespace) -> int:
    from ..core.images import load_image, save_image
    from ..optvis import parse_spec, render
    from ..optvis.accentuation import DEFAULT_DISTANCE
    from ..optvis.settings import FULL_STEPS

    _check(args)
    settings = render_settings(args)  # bad values refused before the model loads
    init = load_image(args.init) if args.init else None
    photo = load_image(args.accentuate) if args.accentuate else None
    paths = _paths(args)
    model = model_from_args(args)
    objectives = [parse_spec(model, spec) for spec in args.specs]  # every spec checked before any optimisation
    if args.accentuate_layer:
        model.parts(args.accentuate_layer)  # an unknown layer fails now
    began = time.perf_counter()
    results = render(model, objectives, settings, batch=args.batch, init=init, thresholds=args.thresholds,
                     progress=show_progress(args), accentuate=photo,
                     accentuate_layer=args.accentuate_layer, accentuate_distance=args.accentuate_distance or DEFAULT_DISTANCE)
    seconds = time.perf_counter() - began
    interrupted = len(results) < len(args.specs) or any(r.interrupted for r in results)
    if interrupted:
        paths = [_partial(path) for path in paths]
    if args.out:  # a threshold grid only where every image reached that step
        steps = set.intersection(*(set(r.images) for r in results)) - {results[0].steps}
        for step in sorted(steps):
            save_image(image_grid([r.images[step] for r in results]), _at_step(paths[0], step))
        save_image(image_grid([r.image for r in results]), paths[0])
        if args.alpha:
            save_image(image_grid([r.alpha.expand(3, -1, -1) for r in results]), alpha_path(paths[0]))
    else:
        for path, result in zip(paths, results):
            for step in sorted(set(result.images) - {result.steps}):
                save_image(result.images[step], _at_step(path, step))
            save_image(result.image, path)
            if args.alpha:
                save_image(result.alpha, alpha_path(path))
    if args.steps < FULL_STEPS and not interrupted and show_progress(args):
        full = seconds * FULL_STEPS / args.steps
        print(f"featvis: a quick render ({args.steps} steps, {seconds:.0f} s); for full quality use --steps {FULL_STEPS} "
              f"(about {f'{full:.0f} s' if full < 90 else f'{full / 60:.0f} min'} here)", file=sys.stderr)
    rows = [{"spec": spec, "path": str(path), "activation": r.activation, "natural_max": r.natural_max, "ratio": r.ratio,
             "plausibility": r.plausibility, "steps": r.steps, "interrupted": r.interrupted,
             "precision": r.precision}
            | ({"alpha": str(alpha_path(path))} if args.alpha else {}) | ({"distance": r.distance} if args.accentuate else {})
            for spec, path, r in zip(args.specs, paths, results)]
    rows += [{"spec": spec, "path": None, "activation": None, "natural_max": None, "ratio": None, "plausibility": None, "steps": 0,
              "interrupted": True, "precision": None} for spec in args.specs[len(results):]]  # never started
    if args.json:
        print_json(rows)
    else:
        for row in rows[: len(results)]:
            ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
            natural = "-" if row["natural_max"] is None else f"{row['natural_max']:.4g}"
            plausible = "-" if row["plausibility"] is None else f"{row['plausibility']:.3f}"
            print(f"{row['spec']}: activation {row['activation']:.4g}, natural max {natural}, ratio {ratio}, "
                  f"plausibility {plausible} -> {row['path']}")
    if interrupted:
        print(f"featvis: interrupted after {min(r.steps for r in results)} steps; saved the images so far beside "
              f"the requested ones, as {paths[0].name}", file=sys.stderr)
        return 130
    return 0
