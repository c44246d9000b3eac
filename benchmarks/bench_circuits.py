"""Speed of expanded weights: featvis against the straightforward way, side by side in one run.

featvis runs the linearized network on the smallest image where a central target unit reads no
padding and gets the Jacobian of that unit for all target channels in batched backward passes.
The straightforward way runs it at the model's input size (224 px) with one backward pass per
target channel; it is timed on the first ``--channels`` target channels and scaled to all of them
(printed as an estimate). Both give the same numbers (their largest difference is printed).

    python benchmarks/bench_circuits.py            # inceptionv1 mixed3a -> mixed3b and -> mixed4a (real weights)
    python benchmarks/bench_circuits.py --quick    # resnet18 (random init) layer1 -> layer2.0, no weights needed
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torchvision

import featvis
from featvis.circuits import linearized
from featvis.receptive_field import relative_field


def straightforward(model: featvis.FeatvisModel, source: str, target: str, channels: int) -> tuple[torch.Tensor, float]:
    """Kernels of the first ``channels`` target channels at the model's input size, one backward pass each."""
    start = time.perf_counter()
    field = relative_field(model, source, target)
    unit = field.central_unit()
    box = field.region(unit)
    net = copy.deepcopy(model).double().eval().requires_grad_(False)
    grabbed = {}
    handle = net.net.get_submodule(net.resolve(source)).register_forward_hook(
        lambda module, inputs, output: grabbed.setdefault("map", output.requires_grad_()))
    image = torch.full((1, 3, model.input_size, model.input_size), 0.5, dtype=torch.float64)
    with linearized():
        out = featvis.capture(net, image, [target], detach=False)[target][0, :, unit[0], unit[1]]
    handle.remove()
    rows = [torch.autograd.grad(out[c], grabbed["map"], retain_graph=True)[0][0, :, box.y0 : box.y1, box.x0 : box.x1]
            for c in range(channels)]
    return torch.stack(rows), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 (random init), one layer pair")
    parser.add_argument("--channels", type=int, default=32, help="target channels timed for the straightforward way")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        model, pairs = featvis.as_model(torchvision.models.resnet18().eval()), [("layer1", "layer2.0")]
    else:
        model, pairs = featvis.load_model("inceptionv1"), [("mixed3a", "mixed3b"), ("mixed3a", "mixed4a")]
    print(f"expanded weights, {model.name} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    print(f"{'pair':<24} {'shape':<20} {'featvis':>9} {'one by one (est.)':>18} {'ratio':>7} {'max diff':>9}")
    for source, target in pairs:
        start = time.perf_counter()
        weights = featvis.expanded_weights(model, source, target)
        ours = time.perf_counter() - start
        some, theirs = straightforward(model, source, target, min(args.channels, len(weights)))
        estimate = theirs * len(weights) / len(some)
        difference = float((weights[: len(some)] - some).abs().max())
        print(f"{source + ' -> ' + target:<24} {'x'.join(map(str, weights.shape)):<20} {ours:>8.2f}s {estimate:>17.1f}s "
              f"{estimate / ours:>6.1f}x {difference:>9.1e}")


if __name__ == "__main__":
    main()
