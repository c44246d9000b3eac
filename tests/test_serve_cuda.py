"""`featvis serve --device cuda`: the batched queue on a GPU, in float32 and bfloat16. Concurrent unit
requests are batched into few render calls, and a picture equals what a separate `featvis render
--device cuda` process makes of the specs it was rendered with (float32: exactly; bfloat16: within a
few levels, GPU kernels may sum in another order). Skips without CUDA; benchmarks/gpu_check.sh runs it.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

pytest.importorskip("starlette", reason="featvis serve needs the serve extra: pip install 'featvis[serve]'")

from test_serve import RENDER, Serve, cli_render, pixels, write_project  # noqa: E402

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_queue_on_cuda_batches_and_matches_featvis_render(tmp_path, precision, monkeypatch):
    project = write_project(tmp_path)
    settings = [*RENDER[:-1], precision]  # RENDER ends with the precision
    monkeypatch.setattr("test_serve.RENDER", settings)
    serve = Serve(project, tmp_path / "cache", "--device", "cuda")
    try:
        keys: dict[int, str] = {}
        threads = [threading.Thread(target=lambda c=c: keys.__setitem__(c, serve.keys(f"/layer/conv3/{c}")[0])) for c in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        states = {c: serve.wait(key) for c, key in keys.items()}
        stats = serve.json("/api/stats")
        assert stats["render_calls"] < stats["images"] / 2 and stats["largest_batch"] > 2, stats
        batch = states[3]["meta"]["batch"]
        expected = cli_render(project, [*batch], tmp_path / "cli", ["--device", "cuda"])["conv3:3"]
        shown = pixels(serve.get("/files/" + states[3]["files"][0])[1])
        worst = np.abs(shown.astype(int) - expected.astype(int)).max()
        assert worst == 0 if precision == "float32" else worst <= 8, worst
    finally:
        serve.stop()
