"""The activation grid of `featvis explain`: all icons in one batched render vs one at a time.

    FEATVIS_WEIGHTS_DIR=... python benchmarks/bench_explain.py            # 14x14 grid of mixed4d, 256 steps
    FEATVIS_WEIGHTS_DIR=... python benchmarks/bench_explain.py --quick    # 8 positions, 8 steps

Every non-zero position of inceptionv1's mixed4d on the coffee photo gets its icon
(``direction_neuron`` of its activation vector, as `featvis.explain` renders it), first in one
`render` call (batches of ``--batch``), then one `render` call per icon; both are timed in this
run, with the same steps, size and precision, and the ratio printed.
"""

from __future__ import annotations

import argparse
import time

import torch

import featvis
from featvis.explain.attribution import layer_activations
from featvis.explain.blocks import COSSIM_POW
from featvis.optvis import direction_neuron, render


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 positions at 8 steps")
    parser.add_argument("--steps", type=int, default=None, help="steps per icon (default 256; 8 with --quick)")
    parser.add_argument("--positions", type=int, default=None, help="icons (default: all 196; 8 with --quick)")
    parser.add_argument("--size", type=int, default=80)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (8 if args.quick else 256)
    model = featvis.load_model("inceptionv1", progress=False)
    acts = layer_activations(model, model.prepare(featvis.sample_photos()["coffee"]), "mixed4d")
    _, h, w = acts.shape
    positions = [(y, x) for y in range(h) for x in range(w) if float(acts[:, y, x].norm()) > 0]
    positions = positions[: args.positions or (8 if args.quick else len(positions))]
    objectives = [direction_neuron("mixed4d", acts[:, y, x], cossim_pow=COSSIM_POW) for y, x in positions]
    options = dict(steps=steps, size=args.size, natural=False, progress=False, precision=args.precision)
    print(f"inceptionv1 mixed4d ({h}x{w}), coffee: {len(objectives)} icons, {steps} steps, {args.size} px, "
          f"{torch.get_num_threads()} threads, precision {args.precision}")

    start = time.perf_counter()
    render(model, objectives, batch=args.batch, **options)
    batched = time.perf_counter() - start
    start = time.perf_counter()
    for objective in objectives:
        render(model, [objective], **options)
    single = time.perf_counter() - start
    print(f"{'one batched call':<22} {batched:9.1f} s  {batched / len(objectives):7.2f} s/icon  (batch {args.batch})")
    print(f"{'one icon at a time':<22} {single:9.1f} s  {single / len(objectives):7.2f} s/icon")
    print(f"ratio (one at a time / batched): {single / batched:.2f}x")


if __name__ == "__main__":
    main()
