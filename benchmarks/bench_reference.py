"""Speed of featvis.reference against PyTorch on a few layer sizes.

The reference is featvis's ground truth for correctness (explicit windows in NumPy, float64,
hand-written backward); it is not meant to be fast. This prints how much slower it is than
PyTorch's own kernels, forward and forward+backward, measured side by side in one run:

    python benchmarks/bench_reference.py [--repeat 5] [--batch 1] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys

# one thread on both sides unless asked otherwise: set before NumPy / PyTorch start their pools
_threads = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--threads=")), None)
if _threads is None and "--threads" in sys.argv[:-1]:
    _threads = sys.argv[sys.argv.index("--threads") + 1]
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, _threads or "1")

from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from featvis import reference  # noqa: E402
from timing import best_time  # noqa: E402

# name, input (C, H, W), op for a module `ops` (featvis.reference or torch.nn.functional), parameter shapes
LAYERS: list[tuple[str, tuple[int, int, int], Callable, list[tuple[int, ...]]]] = [
    ("conv 3x3, 1->8, 64x64 (lecture)", (1, 64, 64), lambda ops, x, w, b: ops.conv2d(x, w, b, padding=1), [(8, 1, 3, 3), (8,)]),
    ("conv 7x7/2, 3->64, 224x224 (conv1)", (3, 224, 224), lambda ops, x, w, b: ops.conv2d(x, w, b, 2, 3), [(64, 3, 7, 7), (64,)]),
    ("conv 3x3, 96->128, 28x28 (3a 3x3)", (96, 28, 28), lambda ops, x, w, b: ops.conv2d(x, w, b, padding=1), [(128, 96, 3, 3), (128,)]),
    ("conv 5x5, 16->48, 14x14 (4a 5x5)", (16, 14, 14), lambda ops, x, w, b: ops.conv2d(x, w, b, padding=2), [(48, 16, 5, 5), (48,)]),
    ("maxpool 3x3/2 ceil, 192ch 56x56", (192, 56, 56), lambda ops, x: ops.max_pool2d(x, 3, 2, ceil_mode=True), []),
    ("avgpool 3x3/1 pad 1, 64ch 28x28", (64, 28, 28), lambda ops, x: ops.avg_pool2d(x, 3, 1, 1), []),
]




def measure(ops, op: Callable, tensors: list[torch.Tensor], repeat: int) -> tuple[float, float]:
    """(forward, forward+backward) seconds of `op` through `ops` on `tensors`."""

    def forward():
        with torch.no_grad():
            return op(ops, *tensors)

    def forward_backward():
        out = op(ops, *tensors)
        grad = torch.ones_like(out)
        return torch.autograd.grad(out, tensors, grad)

    return best_time(forward, repeat), best_time(forward_backward, repeat)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per measurement; the fastest counts")
    parser.add_argument("--batch", type=int, default=1, help="images per batch")
    parser.add_argument("--threads", type=int, default=1, help="threads for PyTorch and NumPy's BLAS")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)

    header = f"{'layer':38s} {'ref fwd':>9s} {'torch f64':>9s} {'torch f32':>9s} {'ref/f64':>8s}   " \
             f"{'ref f+b':>9s} {'torch f64':>9s} {'torch f32':>9s} {'ref/f64':>8s}"
    print(f"featvis.reference vs PyTorch {torch.__version__}: batch {args.batch}, {args.threads} thread(s), "
          f"best of {args.repeat}; times in ms (f+b = forward + backward)")
    print(header)
    print("-" * len(header))
    for name, (channels, height, width), op, param_shapes in LAYERS:
        shapes = [(args.batch, channels, height, width), *param_shapes]
        doubles = [torch.randn(s, generator=generator, dtype=torch.float64).requires_grad_() for s in shapes]
        floats = [t.detach().float().requires_grad_() for t in doubles]
        ref = measure(reference, op, doubles, args.repeat)
        f64 = measure(F, op, doubles, args.repeat)
        f32 = measure(F, op, floats, args.repeat)
        cells = []
        for phase in (0, 1):
            cells.append(
                f"{ref[phase] * 1e3:9.2f} {f64[phase] * 1e3:9.2f} {f32[phase] * 1e3:9.2f} {ref[phase] / f64[phase]:7.1f}x"
            )
        print(f"{name:38s} {cells[0]}   {cells[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
