"""Quality of feature visualisations on inceptionv1: do they beat natural photos, is any image flat?

For a seeded sample of channels from every mixed layer (mixed3a .. mixed5b), render each channel
with the default settings and report the activation reached, the best activation of that channel
over natural photos (scikit-image's sample photos and their crops, `featvis.optvis.natural_max`)
and their ratio. Prints the share of channels with ratio > 1 (the article's claim: a
visualisation beats every natural image; target 100%) and the share of flat images (pixel
standard deviation below 0.02, the flat grey that plain gradient ascent gives for channels that
are dead at a noise start; target 0%). The sample includes, per layer, channels that are zero
everywhere for the noise start whenever the layer has some.

    python benchmarks/bench_quality.py [--per-layer 2] [--steps 128] [--seed 0] [--precision auto]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

import featvis
from featvis.optvis import make_param, render
from featvis.optvis.transforms import resize

LAYERS = ("mixed3a", "mixed3b", "mixed4a", "mixed4b", "mixed4c", "mixed4d", "mixed4e", "mixed5a", "mixed5b")
FLAT_STD = 0.02
SIZE = 128


def dead_at_start(model: featvis.FeatvisModel, layer: str) -> set[int]:
    """Channels that are zero everywhere for a noise start (the FFT parameterisation's initial image)."""
    images = make_param("fft", [torch.Generator().manual_seed(i) for i in range(4)], SIZE)().detach()
    with torch.no_grad():
        acts = featvis.capture(model, resize(images, model.input_size), [layer])[layer]
    return set((acts.amax(dim=(0, 2, 3)) <= 0).nonzero().flatten().tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-layer", type=int, default=2, help="channels sampled per mixed layer (default 2)")
    parser.add_argument("--steps", type=int, default=128, help="optimisation steps (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the channel sample and of the renders (default 0)")
    parser.add_argument("--precision", default="auto", help="render precision: auto, float32 or bfloat16 (default auto)")
    args = parser.parse_args()

    model = featvis.load_model("inceptionv1", progress=False)
    rng = random.Random(args.seed)
    rows = []
    start = time.perf_counter()
    for layer in LAYERS:
        count = featvis.optvis.layer_shapes(model, [layer], model.input_size)[layer][0]
        dead = sorted(dead_at_start(model, layer))
        picks = rng.sample(dead, 1) if dead else []  # always include a channel that is dead at the start
        picks += rng.sample(sorted(set(range(count)) - set(picks)), args.per_layer - len(picks))
        for result in render(model, [f"{layer}:{c}" for c in picks], steps=args.steps, size=SIZE, seed=args.seed,
                             precision=args.precision, progress=False):
            flat = float(result.image.std()) < FLAT_STD
            channel = int(result.spec.split(":")[1])
            rows.append((result, flat))
            print(f"{result.spec:13s} {'dead at start' if channel in dead else '':13s} activation {result.activation:9.2f}  "
                  f"natural max {result.natural_max:8.2f}  ratio {result.ratio:7.2f}  std {result.image.std():.3f}"
                  f"{'  FLAT' if flat else ''}", flush=True)
    beat = sum(1 for r, _ in rows if r.ratio is not None and r.ratio > 1)
    flat = sum(1 for _, f in rows if f)
    print(f"{len(rows)} channels from {len(LAYERS)} mixed layers, {args.steps} steps, {SIZE} px, precision {args.precision}, "
          f"{time.perf_counter() - start:.0f} s")
    print(f"ratio > 1 (beats every natural photo): {beat}/{len(rows)} = {beat / len(rows):.0%}   (target 100%)")
    print(f"flat images (std < {FLAT_STD}): {flat}/{len(rows)} = {flat / len(rows):.0%}   (target 0%)")


if __name__ == "__main__":
    main()
