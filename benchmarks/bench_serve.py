"""Load test of `featvis serve`: N concurrent clients asking for different units of one layer.

Printed side by side in one run, each server a real `featvis serve` process on 127.0.0.1 with a
fresh cache (so every request is a render), after one warm-up request:

- batched (the server's default queue, up to --batch images per render call): one client alone,
  then N clients at once, each asking for one unit's picture and polling until it is ready;
- one render per request (the same server with ``--batch 1``): the same N clients.

For each: wall time until every client has its picture, requests/s, render calls made and the
largest batch. Target: N = 8 concurrent unit requests finish in under 2x the time of one.

    python benchmarks/bench_serve.py [--model inceptionv1] [--layer mixed4a] [--clients 8] [--steps 64]
        [--size 128] [--device cpu] [--precision auto] [--quick]

``--quick`` uses a small random CNN (no weights needed) with 16 steps at 48 px. The default model
needs FEATVIS_WEIGHTS_DIR.
"""

from __future__ import annotations

import argparse
import json
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
                        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    return featvis.FeatvisModel(net, name="quick", input_size=64).freeze()
'''


class Server:
    """A `featvis serve` process with a fresh cache; ``url`` read from its first line."""

    def __init__(self, model: str, cwd: Path, cache: Path, batch: int, args: argparse.Namespace):
        command = [sys.executable, "-m", "featvis", "serve", model, "--port", "0", "--cache", str(cache), "--batch", str(batch),
                   "--steps", str(args.steps), "--size", str(args.size), "--device", args.device, "--precision", args.precision,
                   "--window-ms", str(args.window_ms), "-q"]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="inceptionv1")
    parser.add_argument("--layer", default="mixed4a")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--window-ms", type=float, default=50.0)
    parser.add_argument("--quick", action="store_true", help="a small random CNN, 16 steps at 48 px")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        model, layer, cwd = args.model, args.layer, Path.cwd()
        if args.quick:
            (root / "quick.py").write_text(QUICK_NET)
            model, layer, cwd = "quick.py:small", "4", root
            args.steps, args.size = 16, 48
        n = args.clients
        print(f"featvis serve load test: {model} {layer}, {args.steps} steps, {args.size} px, {args.device}, "
              f"{n} concurrent clients (each a different unit), fresh caches", flush=True)
        rows = []
        batched = Server(model, cwd, root / "cache-batched", max(16, n), args)
        try:
            batched.unit(layer, 0)  # warm-up: the natural-photo reference and first-call costs
            before = batched.call("/api/stats")["render_calls"]
            one, _ = batched.clients(layer, [1])
            wall, latencies = batched.clients(layer, list(range(2, 2 + n)))
            stats = batched.call("/api/stats")
            rows.append(("batched queue, 1 client", one, [one], 1, 1))
            rows.append((f"batched queue, {n} clients", wall, latencies, stats["render_calls"] - before - 1,
                         max(stats["batches"][-(stats["render_calls"] - before - 1):])))
        finally:
            batched.stop()
        single = Server(model, cwd, root / "cache-single", 1, args)
        try:
            single.unit(layer, 0)
            before = single.call("/api/stats")["render_calls"]
            wall1, latencies1 = single.clients(layer, list(range(2, 2 + n)))
            stats = single.call("/api/stats")
            rows.append((f"one render per request, {n} clients", wall1, latencies1, stats["render_calls"] - before, 1))
        finally:
            single.stop()
    print(f"\n{'':38} {'wall s':>8} {'req/s':>7} {'mean latency s':>15} {'render calls':>13} {'largest batch':>14}")
    for name, seconds, latencies, calls, largest in rows:
        print(f"{name:38} {seconds:8.2f} {len(latencies) / seconds:7.2f} {sum(latencies) / len(latencies):15.2f} "
              f"{calls:13d} {largest:14d}")
    ratio = rows[1][1] / rows[0][1]
    print(f"\n{n} concurrent requests took {ratio:.2f}x the time of one (target < 2x: {'met' if ratio < 2 else 'NOT met'}); "
          f"one render per request took {rows[2][1] / rows[1][1]:.2f}x the batched queue's time")


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
