"""Whole process, side by side: `featvis render` of 8 mixed4a channels against Lucent rendering them.

The issue's setting: 8 channels of inceptionv1's mixed4a, 128 px images, 64 steps, float32 (as
on every CPU without AMX; ``--precision`` to change). Each side is a fresh Python process timed
from start to exit, so imports, loading the weights and (for featvis) the natural-photo
comparison all count, as a user waits for them:

- featvis: ``featvis render inceptionv1 mixed4a:0 ... mixed4a:7 --batch 8 --size 128 --steps N``;
- Lucent (torch-lucent 0.1.8, not a featvis dependency: ``pip install --no-deps torch-lucent==0.1.8
  kornia==0.4.1 decorator``): a script that loads the same model through featvis and calls
  ``render_vis`` once per channel, as Lucent is normally used, saving each image.

Runs alternate (featvis, Lucent, featvis, ...) so that load on a shared machine hits both alike;
the fastest of ``--repeats`` counts. Wall seconds and CPU seconds (the child's user + system time,
all threads, which other processes disturb much less) are both printed, with their ratios.

    python benchmarks/bench_process.py [--steps 64] [--repeats 3] [--precision float32] [--quick]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHANNELS = 8
LUCENT = """
import sys, warnings
warnings.simplefilter("ignore")
import featvis
from lucent.optvis import param, render
steps, out = int(sys.argv[1]), sys.argv[2]
model = featvis.load_model("inceptionv1", progress=False)
layer = "net_" + model.resolve("mixed4a").replace(".", "_")
for c in range({channels}):
    images = render.render_vis(model, f"{{layer}}:{{c}}", param_f=lambda: param.image(128), thresholds=(steps,),
                               preprocess=False, progress=False, show_image=False)
    featvis.save_image(images[-1][0], f"{{out}}/lucent_{{c}}.png")
""".format(channels=CHANNELS)


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of a child process run to completion; it must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv[:3])} ... failed:\n{result.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=64, help="optimisation steps per image (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, the fastest counts (default 3)")
    parser.add_argument("--precision", default="float32", help="featvis --precision (default float32)")
    parser.add_argument("--quick", action="store_true", help="16 steps, one run per side (a smoke test, not the target)")
    args = parser.parse_args()
    steps, repeats = (16, 1) if args.quick else (args.steps, args.repeats)
    featvis_bin = str(Path(sys.executable).with_name("featvis"))
    with tempfile.TemporaryDirectory() as out:
        sides = {
            "featvis": [featvis_bin, "render", "inceptionv1", *(f"mixed4a:{c}" for c in range(CHANNELS)), "--batch",
                        str(CHANNELS), "--size", "128", "--steps", str(steps), "--precision", args.precision,
                        "--out-dir", out, "--quiet"],
            "Lucent": [sys.executable, "-c", LUCENT, str(steps), out],
        }
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        for _ in range(repeats):
            for name, argv in sides.items():
                runs[name].append(timed(argv))
                print(f"{name:8s} wall {runs[name][-1][0]:7.1f} s   CPU {runs[name][-1][1]:7.1f} s", flush=True)
    best = {name: (min(r[0] for r in rs), min(r[1] for r in rs)) for name, rs in runs.items()}
    print(f"{CHANNELS} channels x {steps} steps of mixed4a at 128 px, featvis {args.precision}, whole process (fastest of "
          f"{repeats}): featvis is {best['Lucent'][0] / best['featvis'][0]:.2f}x (wall) / "
          f"{best['Lucent'][1] / best['featvis'][1]:.2f}x (CPU) faster than Lucent (target >= 3.5x float32, >= 5x bfloat16)")


if __name__ == "__main__":
    main()
