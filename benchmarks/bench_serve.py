"""Load test of `featvis serve`: 1, 8 and 32 concurrent clients asking for different units of one layer.

Printed side by side in one run, each server a real `featvis serve` process on 127.0.0.1 with a fresh
cache (so every request is a render), after one warm-up request:

- the default queue (batches only as far as it lowers the mean wait, measured on this device);
- ``--fixed-batch`` (always up to --batch images per render call);
- one render per request (``--batch 1``).

For each and each client count: wall time until every client has its picture, mean and p95 latency,
render calls and the largest batch. On a GPU the target is 8 concurrent requests in under 2x the time of
one; on a CPU, where a batch of 8 costs 8 single renders, the target is a mean latency no worse than
one render per request.

    python benchmarks/bench_serve.py [--model inceptionv1] [--layer mixed4a] [--clients 1,8,32] [--steps 64]
        [--size 128] [--device cpu] [--precision auto] [--quick]

``--quick`` uses a small random CNN (no weights needed) with 16 steps at 48 px. The default model
needs FEATVIS_WEIGHTS_DIR.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

QUICK_NET = '''
import torch
from torch import nn
import featvis

def small():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
    return featvis.FeatvisModel(net, name="quick", input_size=64).freeze()
'''


class Server:
    """A `featvis serve` process with a fresh cache; ``url`` read from its first line."""

    def __init__(self, model: str, cwd: Path, cache: Path, extra: list[str], args: argparse.Namespace):
        command = [sys.executable, "-m", "featvis", "serve", model, "--port", "0", "--cache", str(cache), *extra,
                   "--steps", str(args.steps), "--size", str(args.size), "--device", args.device, "--precision", args.precision,
                   "--window-ms", str(args.window_ms), "--drop-after", "3600", "-q"]
        self.process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
        line = self.process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            self.process.kill()
            raise SystemExit(f"featvis serve did not start: {line!r}")
        self.url = f"http://127.0.0.1:{match[1]}"

    def call(self, path: str, post: bool = False) -> dict:
        request = urllib.request.Request(self.url + path, data=b"" if post else None, method="POST" if post else "GET")
        with urllib.request.urlopen(request, timeout=600) as answer:
            return json.loads(answer.read())

    def unit(self, layer: str, channel: int) -> float:
        """Ask for one unit's picture (as a layer page does) and wait for it; returns the seconds it took."""
        began = time.perf_counter()
        key = self.call(f"/api/enqueue/{layer}/{channel}", post=True)["key"]
        while True:
            state = self.call(f"/api/status?key={key}")[key]
            if state["state"] == "done":
                return time.perf_counter() - began
            if state["state"] == "failed":
                raise SystemExit(f"{layer}:{channel} failed: {state['error']}")
            time.sleep(0.02)

    def clients(self, layer: str, channels: list[int]) -> tuple[float, list[float]]:
        """All channels at once, one thread each; (wall seconds, each request's seconds)."""
        latencies: list[float] = []
        threads = [threading.Thread(target=lambda c=c: latencies.append(self.unit(layer, c))) for c in channels]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - began, latencies

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="inceptionv1")
    parser.add_argument("--layer", default="mixed4a")
    parser.add_argument("--clients", default="1,8,32", help="client counts, comma-separated")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--window-ms", type=float, default=50.0)
    parser.add_argument("--quick", action="store_true", help="a small random CNN, 16 steps at 48 px")
    args = parser.parse_args()
    counts = [int(n) for n in args.clients.split(",")]
    queues = [("adaptive (default)", ["--batch", "16"]), ("fixed batch of 16", ["--batch", "16", "--fixed-batch"]),
              ("one render per request", ["--batch", "1"])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        model, layer, cwd = args.model, args.layer, Path.cwd()
        if args.quick:
            (root / "quick.py").write_text(QUICK_NET)
            model, layer, cwd = "quick.py:small", "4", root
            args.steps, args.size = 16, 48
        print(f"featvis serve load test: {model} {layer}, {args.steps} steps, {args.size} px, {args.device}, "
              f"{', '.join(map(str, counts))} concurrent clients (each a different unit), fresh caches", flush=True)
        for name, extra in queues:
            server = Server(model, cwd, root / f"cache-{len(rows)}", extra, args)
            try:
                server.unit(layer, 0)  # warm-up: the natural-photo reference and first-call costs
                channel = 1
                for n in counts:
                    before = server.call("/api/stats")
                    wall, latencies = server.clients(layer, list(range(channel, channel + n)))
                    channel += n
                    stats = server.call("/api/stats")
                    calls = stats["render_calls"] - before["render_calls"]
                    rows.append((name, n, wall, latencies, calls, max(stats["batches"][-calls:]), stats.get("batching", {})))
                    print(f"  {name}, {n} clients: {wall:.1f} s", flush=True)
            finally:
                server.stop()
    print(f"\n{'queue':24} {'clients':>7} {'wall s':>8} {'mean s':>8} {'p95 s':>8} {'calls':>6} {'largest':>8}  measured cost")
    for name, n, wall, latencies, calls, largest, batching in rows:
        cost = f"call {batching['call_seconds']} s + {batching['image_seconds']} s/image" if batching else ""
        print(f"{name:24} {n:7d} {wall:8.2f} {sum(latencies) / n:8.2f} {p95(latencies):8.2f} {calls:6d} {largest:8d}  {cost}")
    by = {(name, n): (wall, sum(latencies) / n) for name, n, wall, latencies, *_ in rows}
    single = {n: by[(queues[0][0], n)][0] for n in counts}
    for n in counts[1:]:
        print(f"{n} concurrent requests, default queue: {single[n] / single[counts[0]]:.2f}x the time of {counts[0]}; mean "
              f"latency {by[(queues[0][0], n)][1] / by[(queues[2][0], n)][1]:.2f}x one render per request's, "
              f"fixed batching {by[(queues[1][0], n)][1] / by[(queues[2][0], n)][1]:.2f}x")


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
