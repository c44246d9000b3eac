"""Time of every saliency method for one 224 px photo on inceptionv1, and integrated gradients
with 50 steps at several internal batch sizes, measured side by side in one run:

    FEATVIS_WEIGHTS_DIR=... python benchmarks/bench_saliency.py [--repeat 3] [--threads N] [--device cpu]

Each figure is the median of ``--repeat`` runs after one warm-up run. Guided methods include
preparing the model copy (``guided_model``), which is also timed on its own.
"""

from __future__ import annotations

import argparse

import torch

import featvis
from featvis.saliency import METHODS, attribute, guided_model
from featvis.saliency.sanity import deletion_insertion
from timing import median_seconds

IG_BATCHES = (1, 5, 10, 25, 50)




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = featvis.load_model("inceptionv1", device=args.device, progress=False)
    x = model.prepare(featvis.sample_photos()["coffee"])
    target = int(model(x).argmax())
    print(f"inceptionv1, coffee 224x224, target '{model.label(target)}' ({target}), device {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeat}")

    forward = median_seconds(lambda: model(x), args.repeat)
    print(f"\n{'method':<16} {'seconds':>8} {'x forward':>10}  settings")
    print(f"{'(forward only)':<16} {forward:8.3f} {1.0:10.1f}")
    settings = {"ig": "50 steps, internal batch 16", "smoothgrad": "25 samples, noise 0.15 of range",
                "occlusion": "32 px window, stride 16 (169 patches), 16 per pass", "gradcam": "at mixed5b",
                "guided-gradcam": "at mixed5b"}
    for method in METHODS:
        seconds = median_seconds(lambda: attribute(model, x, method, target, layer="mixed5b"), args.repeat)
        print(f"{method:<16} {seconds:8.3f} {seconds / forward:10.1f}  {settings.get(method, '')}")
    prepare = median_seconds(lambda: guided_model(model), args.repeat)
    print(f"{'guided_model':<16} {prepare:8.3f} {prepare / forward:10.1f}  copy + ReLU audit (inside guided methods)")
    saliency_map = attribute(model, x, "saliency", target).abs().sum(0)
    scores = median_seconds(lambda: deletion_insertion(model, x, saliency_map, target), args.repeat)
    print(f"{'deletion/insert':<16} {scores:8.3f} {scores / forward:10.1f}  32 steps each (66 images)")

    print(f"\nintegrated gradients, 50 steps\n{'internal batch':>14} {'seconds':>8} {'vs batch 1':>11}")
    baseline = None
    for batch in IG_BATCHES:
        seconds = median_seconds(lambda: attribute(model, x, "ig", target, steps=50, internal_batch_size=batch), args.repeat)
        baseline = baseline or seconds
        print(f"{batch:>14} {seconds:8.3f} {baseline / seconds:10.2f}x")


if __name__ == "__main__":
    main()
