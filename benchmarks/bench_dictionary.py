"""Sparse dictionaries (`featvis dictionary`) on real BVLC GoogLeNet: speed, memory, quality, processes, descriptions.

Printed side by side in one run, on collections made from the sample photos (as bench_examples.py):

- sampling: vectors per second of the dictionary's streaming pass against a plain `torch.no_grad()` forward
  loop to the same layer over the same DataLoader (target: within 1.25x), and the training's vectors/s;
- peak memory (resident set) of the whole command over N and 10 N photos with the same --samples, each in a
  fresh process (target: equal within 10%: the pass keeps the sample, not the photos);
- quality: fraction of variance unexplained and L0 on held-out photos, dead features, top-1 agreement and
  loss recovered (the layer replaced by its reconstruction);
- processes: two torchrun processes (DDP, gloo) against one, largest difference of the dictionaries;
- descriptions: on mixed5b and mixed4d units, top-5 overlap of the promoted classes by the two routes (mean
  gradient over photos, and the linearized network without photos). After mixed5b the network is linear
  (average pool, dropout, fc), so there the two routes must agree exactly; mixed4d has ReLUs and pools after it.

    python benchmarks/bench_dictionary.py [--quick] [--layer mixed4c] [--features 2048] [--k 32] [--steps 1000]

Needs FEATVIS_WEIGHTS_DIR (inceptionv1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import featvis
from featvis.dictionary import load_dictionary, train_dictionary
from featvis.dictionary.train import TrainSettings, train_topk

sys.path.insert(0, str(Path(__file__).parent))
from bench_examples import make_collection, plain_loop  # noqa: E402  - the same collections and plain loop

PEAK_SCRIPT = """
import json, resource, sys, featvis
model = featvis.load_model("inceptionv1", progress=False)
featvis.train_dictionary(model, sys.argv[1], sys.argv[2], features=256, k=8, samples=int(sys.argv[3]), steps=10,
                         workers=2, progress=False)
print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def peak_memory(folder: Path, layer: str, samples: int) -> int:
    run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(folder), layer, str(samples)], capture_output=True,
                         text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])["peak_kib"]


def sampling_rate(model: featvis.FeatvisModel, folder: Path, layer: str, samples: int, batch: int) -> float:
    """Seconds of the dictionary's streaming pass alone (training one step)."""
    from featvis.dictionary.build import _channels, _sample
    from featvis.examples.source import list_images

    paths = list_images(folder)
    start = time.perf_counter()
    _sample(model, paths, layer, _channels(model, layer), samples, 0, None, (0, 1), batch, 2, False)
    return time.perf_counter() - start


def two_processes(folder: Path, layer: str, out: Path, train: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, launcher in (("one", []), ("two", ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])):
        command = [sys.executable, *launcher, "-m", "featvis", "dictionary", "inceptionv1", "--images", str(folder),
                   "--layer", layer, *train, "--out", str(out / name), "--quiet", "--json"]
        subprocess.run(command, env=env, check=True, capture_output=True)
    one, two = load_dictionary(out / "one"), load_dictionary(out / "two")
    return {**{name: float((getattr(one, name) - getattr(two, name)).abs().max()) for name in ("encoder", "decoder")},
            "cosine": float(torch.nn.functional.cosine_similarity(one.decoder, two.decoder).min())}


def route_overlap(model: featvis.FeatvisModel, folder: Path, layer: str, channels: int, units: int) -> float:
    from featvis.explain.promotes import first_photos

    photos = first_photos(folder)
    overlaps = []
    for channel in range(0, channels, channels // units):
        over = {i for i, _, _ in featvis.promoted_classes(model, layer, channel, photos)}
        linear = {i for i, _, _ in featvis.promoted_classes(model, layer, channel, None)}
        overlaps.append(len(over & linear) / 5)
    return sum(overlaps) / len(overlaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 / 400 photos, a small dictionary, fewer steps")
    parser.add_argument("--layer", default="mixed4c")
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32, help="photos per forward pass")
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "featvis-bench-examples"))
    args = parser.parse_args()
    small, large = (40, 400) if args.quick else (200, 2000)
    features, steps = (512, 300) if args.quick else (args.features, args.steps)
    folders = {n: make_collection(Path(args.cache) / f"photos{n}", n) for n in (small, large)}
    model = featvis.load_model("inceptionv1", progress=False)
    samples = small * 196  # every position's worth of vectors, drawn at random positions
    print(f"featvis dictionary inceptionv1 --layer {args.layer} --features {features} --k {args.k} --steps {steps} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs)")
    plain_loop(model, folders[small], args.layer, args.batch, 2)  # warm-up
    plain = min(plain_loop(model, folders[small], args.layer, args.batch, 2) for _ in range(2))
    sampled = min(sampling_rate(model, folders[small], args.layer, samples, args.batch) for _ in range(2))
    print(f"sampling over {small} photos: plain no_grad loop {small / plain:.1f} img/s, dictionary pass "
          f"{small / sampled:.1f} img/s ({samples / sampled:.0f} vectors/s) -> {sampled / plain:.2f}x "
          f"({'met' if sampled / plain <= 1.25 else 'MISSED'}: <= 1.25x)")
    x = torch.randn(samples, 528 if args.layer == "mixed4d" else 512)
    start = time.perf_counter()
    train_topk(x, TrainSettings(features, args.k, 50, 1024, 1e-3, 0), progress=False)
    per_step = (time.perf_counter() - start) / 50
    print(f"training: {per_step * 1000:.0f} ms per step of 1024 vectors ({1024 / per_step:.0f} vectors/s)")
    peaks = {n: peak_memory(folders[n], args.layer, samples) for n in folders}
    growth = peaks[large] / peaks[small]
    print(f"peak memory, --samples {samples}: {small} photos {peaks[small] / 1024:.0f} MiB, {large} photos "
          f"{peaks[large] / 1024:.0f} MiB -> {growth:.3f}x ({'met' if abs(growth - 1) <= 0.10 else 'MISSED'}: within 10%)")
    start = time.perf_counter()
    dictionary = train_dictionary(model, folders[large], args.layer, features=features, k=args.k,
                                  samples=large * 49, steps=steps, progress=False)
    info = dictionary.info
    print(f"quality ({large} photos, {info['samples']} vectors, {info['held_out']} held out; {time.perf_counter() - start:.0f} s): "
          f"FVU {info['fvu']:.4f}, L0 {info['l0']:.1f}, dead {info['dead']} of {features}, "
          f"top-1 agreement {info['agreement']:.3f}, loss recovered {info['loss_recovered']:.3f}")
    with tempfile.TemporaryDirectory() as tmp:
        train = ["--features", "256", "--k", "8", "--samples", str(small * 49), "--steps", "200", "--workers", "0"]
        difference = two_processes(folders[small], args.layer, Path(tmp), train)
    print(f"torchrun, 2 processes against 1 ({' '.join(train)}): largest difference encoder "
          f"{difference['encoder']:.2e}, decoder {difference['decoder']:.2e}; the least cosine of a feature's two "
          f"directions {difference['cosine']:.6f}")
    units = 16 if args.quick else 64
    for layer, channels in (("mixed5b", 1024), ("mixed4d", 528)):
        print(f"promoted classes of {units} {layer} units, photos route (8 photos) against the linearized route: "
              f"top-5 overlap {route_overlap(model, folders[small], layer, channels, units):.2f}")


if __name__ == "__main__":
    main()
