"""Speed of the receptive-field analysis: every layer of GoogLeNet (inceptionv1) and a few others.

The analysis runs each model once on shape-only ("meta") tensors while watching every operation,
so it costs about as much as Python's part of a forward pass, whatever the image size. Printed
side by side in one run: the analysis of all layers, and for scale one real forward pass of the
same model on one image of the same size (float32, no gradients).

    python benchmarks/bench_receptive_field.py [--repeat 5] [--size 224] [--threads 1]

Target (issue 4): all layers of inceptionv1 well under a second.
"""

from __future__ import annotations

import argparse

import torch
import torchvision

import featvis
from featvis.models import InceptionV1
from featvis.models.inceptionv1 import LUCID_ALIASES
from timing import best_time




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="input side in pixels")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one gives steady timings on a shared CPU)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {
        "inceptionv1": featvis.FeatvisModel(InceptionV1(), name="inceptionv1", aliases=LUCID_ALIASES),  # weights do not matter
        "torchvision:resnet18": featvis.as_model(torchvision.models.resnet18()),
        "torchvision:mobilenet_v2": featvis.as_model(torchvision.models.mobilenet_v2()),
        "torchvision:densenet121": featvis.as_model(torchvision.models.densenet121()),
    }
    print(f"receptive fields of every layer, {args.size}x{args.size} input, best of {args.repeat} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"{'model':<26} {'layers':>6} {'analysis':>10} {'1 forward':>10} {'ratio':>7}")
    for name, model in models.items():
        model.eval()
        layers = len(featvis.receptive_fields(model, input_size=args.size))
        analysis = best_time(lambda: featvis.receptive_fields(model, input_size=args.size), args.repeat)
        image = torch.rand(1, 3, args.size, args.size)
        with torch.no_grad():
            forward = best_time(lambda: model(image), args.repeat)
        print(f"{name:<26} {layers:>6} {analysis * 1000:>8.1f}ms {forward * 1000:>8.1f}ms {analysis / forward:>6.2f}x")
    target = best_time(lambda: featvis.receptive_fields(models["inceptionv1"], input_size=args.size), args.repeat)
    verdict = "met" if target < 0.5 else "MISSED"
    print(f"target: all layers of inceptionv1 well under a second -> {target * 1000:.0f} ms ({verdict}: < 500 ms)")


if __name__ == "__main__":
    main()
