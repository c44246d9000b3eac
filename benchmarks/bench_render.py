"""Seconds per image-step of feature visualisation on inceptionv1 mixed4a, against Lucent and the FLOP floor.

Setting (the issue's): channels of mixed4a, 128 px images upsampled to 224, the article's
transforms, FFT parameterisation with colour decorrelation; featvis at batch 1, 8 and 16.
Side by side in the same run on the same model:

- Lucent's ``render_vis`` (torch-lucent 0.1.8, given the FeatvisModel, which already takes RGB in
  [0, 1], with ``preprocess=False``), one channel at a time as it is normally used. Lucent is
  not a featvis dependency: install it into the environment to compare
  (``pip install --no-deps torch-lucent==0.1.8 kornia==0.4.1 decorator`` plus ipython and
  scikit-learn); without it that row is skipped with a message.
- The FLOP floor: FLOPs of one forward pass up to mixed4a plus the backward pass to the input
  (no weight gradients), counted by ``torch.utils.flop_counter``, divided by this machine's
  float32 matmul rate measured here. The same FLOPs at the bfloat16 matmul rate are printed too:
  the floor for bfloat16 arithmetic, which AMX makes several times lower.

featvis's first `REDIRECT_STEPS` steps use the (slower) redirected-ReLU gradient, so it is timed
as two runs, ``REDIRECT_STEPS`` and ``REDIRECT_STEPS + steps`` long, each the fastest of
``--repeats`` interleaved tries: their difference gives the steady per-step cost, and a 512-step
render is estimated as the first run plus 496 steady steps. Lucent is the fastest of as many
tries.
Every figure is given twice: wall-clock seconds, and CPU seconds (process time, all threads),
which other processes on a shared machine disturb much less; the ratios use one or the other
throughout. Run on a quiet machine; ratios from one run are what to compare.

``--full`` also times, for real, the target's case: one 512-step render of mixed4a channels 0..15
in one batch, at each precision.

    python benchmarks/bench_render.py [--steps 16] [--lucent-steps 16] [--batches 1,8,16] [--precisions float32,bfloat16] [--full]
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch.utils.flop_counter import FlopCounterMode

import featvis
from featvis.optvis import REDIRECT_STEPS, compute_dtype, render
from featvis.core.probe import Probe

LAYER, SIZE, TOTAL_STEPS = "mixed4a", 128, 512


Timing = tuple[float, float]  # (wall seconds, CPU seconds)


def timed(fn) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def matmul_rate(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 10) -> Timing:
    """Matmul FLOP per wall second and per CPU second in ``dtype`` (best of three runs)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    runs = [timed(lambda: [a @ b for _ in range(repeats)]) for _ in range(3)]
    return tuple(2 * n**3 * repeats / min(r[i] for r in runs) for i in (0, 1))  # type: ignore[return-value]


def step_flops(model: featvis.FeatvisModel) -> int:
    """FLOPs of the forward pass to mixed4a and the backward pass to a 224 px input (weights frozen)."""
    x = torch.rand(1, 3, 224, 224, requires_grad=True)
    with Probe(model, [LAYER], early_exit=True, detach=False) as probe, FlopCounterMode(display=False) as counter:
        probe(x)[LAYER][:, 0].mean().backward()
    return counter.get_total_flops()


def _fastest(runs: list[Timing]) -> Timing:
    return min(r[0] for r in runs), min(r[1] for r in runs)


def time_featvis(model: featvis.FeatvisModel, batch: int, steps: int, repeats: int, precision: str) -> Timing:
    """Estimated (wall, CPU) seconds per image-step of a 512-step render of ``batch`` channels."""
    specs = [f"{LAYER}:{c}" for c in range(batch)]
    run = lambda n: lambda: render(model, specs, steps=n, size=SIZE, progress=False, natural=False,  # noqa: E731
                                   precision=precision)
    run(2)()  # warm-up: allocator, oneDNN kernels
    tries = [(timed(run(REDIRECT_STEPS)), timed(run(REDIRECT_STEPS + steps))) for _ in range(repeats)]
    first, longer = _fastest([a for a, _ in tries]), _fastest([b for _, b in tries])
    estimate = []
    for f, t in zip(first, longer):
        steady = (t - f) / steps
        estimate.append((f + (TOTAL_STEPS - REDIRECT_STEPS) * steady) / TOTAL_STEPS if steady > 0 else t / (REDIRECT_STEPS + steps))
    return estimate[0] / batch, estimate[1] / batch


def time_lucent(model: featvis.FeatvisModel, steps: int, repeats: int) -> Timing | None:
    """(wall, CPU) seconds per image-step of Lucent's render_vis on one channel, or None when Lucent is absent."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from lucent.optvis import param, render as lucent_render
    except ImportError as exc:
        print(f"Lucent not installed ({exc}); skipping it. To compare: pip install --no-deps torch-lucent==0.1.8 "
              "kornia==0.4.1 decorator, plus ipython and scikit-learn")
        return None
    layer = "net_" + model.resolve(LAYER).replace(".", "_")
    run = lambda n: lambda: lucent_render.render_vis(model, f"{layer}:0", param_f=lambda: param.image(SIZE),  # noqa: E731
                                                     thresholds=(n,), preprocess=False, progress=False, show_image=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(2)()
        best = _fastest([timed(run(steps)) for _ in range(repeats)])
    return best[0] / steps, best[1] / steps


def _row(name: str, t: Timing, floor: Timing) -> str:
    return f"{name:<22s} wall {t[0]:.4f} s ({t[0] / floor[0]:5.2f}x floor)   CPU {t[1]:.4f} s ({t[1] / floor[1]:5.2f}x floor)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=16, help="steady steps timed per featvis batch (default 16)")
    parser.add_argument("--lucent-steps", type=int, default=16, help="steps timed for Lucent (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="tries per timing, the fastest counts (default 2)")
    parser.add_argument("--batches", default="1,8,16", help="featvis batch sizes (default 1,8,16)")
    parser.add_argument("--precisions", default="float32,bfloat16", help="featvis precisions (default float32,bfloat16)")
    parser.add_argument("--full", action="store_true", help="also time whole 512-step renders of 16 channels")
    args = parser.parse_args()

    model = featvis.load_model("inceptionv1", progress=False)
    rates = {dtype: matmul_rate(dtype) for dtype in (torch.float32, torch.bfloat16)}
    flops = step_flops(model)
    floor = (flops / rates[torch.float32][0], flops / rates[torch.float32][1])
    print(f"machine: {torch.get_num_threads()} threads; matmul GFLOP per wall s / per CPU s: "
          + ", ".join(f"{str(d)[6:]} {r[0] / 1e9:.0f} / {r[1] / 1e9:.0f}" for d, r in rates.items())
          + f"; torch {torch.__version__}; precision auto = {str(compute_dtype('auto', model))[6:]}")
    print(f"FLOP floor: {flops / 1e9:.2f} GFLOP per image-step (forward to {LAYER} + input gradient)")
    print("seconds per image-step (featvis: estimated for a 512-step render); 'x floor' is against the float32 floor")
    print(_row("FLOP floor (float32)", floor, floor))
    bf16_floor = (flops / rates[torch.bfloat16][0], flops / rates[torch.bfloat16][1])
    print(_row("FLOP floor (bfloat16)", bf16_floor, floor))
    rows = {}
    for precision in args.precisions.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            rows[precision, batch] = time_featvis(model, batch, args.steps, args.repeats, precision)
            print(_row(f"featvis {precision} b{batch}", rows[precision, batch], floor))
        if args.full:
            specs = [f"{LAYER}:{c}" for c in range(16)]
            whole = timed(lambda: render(model, specs, steps=TOTAL_STEPS, size=SIZE, progress=False, natural=False,
                                         precision=precision))
            rows[precision, "full"] = (whole[0] / (16 * TOTAL_STEPS), whole[1] / (16 * TOTAL_STEPS))
            print(_row(f"featvis {precision} 512x16", rows[precision, "full"], floor) + f"   (whole render: {whole[0]:.1f} s wall)")
    lucent = time_lucent(model, args.lucent_steps, args.repeats)
    if lucent is not None:
        print(_row("Lucent render_vis", lucent, floor))
    for precision in args.precisions.split(","):
        batch = "full" if (precision, "full") in rows else max(b for p, b in rows if p == precision and b != "full")
        best, own = rows[precision, batch], bf16_floor if precision == "bfloat16" else floor
        versus = (f"{lucent[0] / best[0]:.2f}x (wall) / {lucent[1] / best[1]:.2f}x (CPU) faster than Lucent per image "
                  "(target >= 3.5x), " if lucent else "")
        label = "16 channels x 512 steps, timed whole" if batch == "full" else f"batch {batch}, estimated"
        print(f"featvis {precision} ({label}): {versus}{best[0] / floor[0]:.2f}x / {best[1] / floor[1]:.2f}x the float32 "
              f"floor (target <= 1.6x), {best[0] / own[0]:.2f}x / {best[1] / own[1]:.2f}x its own precision's floor")


if __name__ == "__main__":
    main()
