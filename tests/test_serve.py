"""`featvis serve` as a real process on 127.0.0.1, driven over HTTP: pictures equal to what a separate
`featvis render` process makes, batching of concurrent requests, reuse of the cache by a second server,
4xx pages naming the problem (and escaped), upload limits, a kill -9 in the middle of a render, and one
folder shared by a static `featvis gallery` and the server.

The model is a small user CNN given as ``nets.py:small`` (as a user would); pictures are 48 px with
a few steps, so every render takes well under a second.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="featvis serve needs the serve extra: pip install 'featvis[serve]'")
pytest.importorskip("uvicorn", reason="featvis serve needs the serve extra: pip install 'featvis[serve]'")

NETS = '''
import os
import sys
import time
from collections import OrderedDict

import torch
from torch import nn

import featvis


class Sleep(nn.Module):
    """Sleeps $FEATVIS_TEST_SLEEP seconds per forward pass (a test can kill a render in the middle), and
    $FEATVIS_TEST_EXAMPLES_SLEEP in a `featvis examples` process (a server's examples child)."""

    def forward(self, x):
        time.sleep(float(os.environ.get("FEATVIS_TEST_SLEEP", "0")))
        if "examples" in sys.argv:
            time.sleep(float(os.environ.get("FEATVIS_TEST_EXAMPLES_SLEEP", "0")))
        return x


def small():
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict([
        ("sleep", Sleep()), ("conv1", nn.Conv2d(3, 8, 5, stride=2, padding=2)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(8, 12, 3, padding=1)), ("relu2", nn.ReLU()), ("odd<b>&", nn.Identity()),
        ("conv3", nn.Conv2d(12, 10, 3, padding=1)), ("relu3", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(10, 5)),
    ]))
    return featvis.FeatvisModel(net, name="small", input_size=32, labels=["cat", "dog", "fish", "bird", "<b>lizard</b>"]).freeze()
'''
RENDER = ["--steps", "6", "--size", "48", "--seed", "0", "--precision", "float32"]
START_TIMEOUT = 60.0


def write_project(folder: Path) -> Path:
    """nets.py (the model) and photos/ (four scikit-image photos, 64 px) in ``folder``."""
    from skimage import data

    (folder / "nets.py").write_text(NETS)
    photos = folder / "photos"
    photos.mkdir(exist_ok=True)
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).convert("RGB").resize((64, 64)).save(photos / f"{name}.png")
    return folder


class Serve:
    """A `featvis serve` subprocess on 127.0.0.1 (any free port), its URL read from its first line."""

    def __init__(self, folder: Path, cache: Path, *extra: str, env: dict | None = None, model: str = "nets.py:small"):
        command = [sys.executable, "-m", "featvis", "serve", model, "--port", "0", "--cache", str(cache),
                   *RENDER, "--workers", "0", "--window-ms", "150", "--diversity", "0", "-q", *extra]
        self.process = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, **(env or {})})
        self.stderr: list[str] = []
        threading.Thread(target=lambda: self.stderr.extend(self.process.stderr), daemon=True).start()
        line = self.process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        if not match:
            self.process.kill()
            raise AssertionError(f"no URL from featvis serve: {line!r} {''.join(self.stderr)}")
        self.url = f"http://127.0.0.1:{match[1]}"

    def get(self, path: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes, dict]:
        request = urllib.request.Request(self.url + path, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, answer.read(), dict(answer.headers)
        except urllib.error.HTTPError as error:
            return error.code, error.read(), dict(error.headers)

    def json(self, path: str) -> dict:
        status, body, _ = self.get(path)
        assert status == 200, (path, status, body[:300])
        return json.loads(body)

    def keys(self, path: str) -> list[str]:
        """The picture digests a page shows (placeholders or finished pictures)."""
        status, body, _ = self.get(path)
        assert status == 200, (path, status, body[:300])
        return re.findall(r'data-(?:picture|done)="([0-9a-f]{64})"', body.decode())

    def wait(self, key: str, timeout: float = 60.0) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            state = self.json(f"/api/picture/{key}")
            if state["state"] in ("done", "failed"):
                assert state["state"] == "done", state
                return state
            time.sleep(0.1)
        raise AssertionError(f"picture {key} not ready after {timeout} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def post_raw(url: str, body: bytes, headers: dict, chunked: bool = False) -> tuple[int, str]:
    """POST with http.client, tolerating a server that answers (413) and closes before the body is all sent."""
    import http.client
    from urllib.parse import urlparse

    where = urlparse(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    connection.putrequest("POST", where.path)
    for key, value in headers.items():
        connection.putheader(key, value)
    connection.putheader(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(len(body)))))
    connection.endheaders()
    try:
        for start in range(0, len(body), 64 * 1024):
            piece = body[start : start + 64 * 1024]
            connection.send(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            connection.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server stopped reading: its answer is waiting
    answer = connection.getresponse()
    text = answer.read().decode()
    connection.close()
    return answer.status, text


def multipart(field: str, name: str, data: bytes) -> tuple[bytes, dict]:
    boundary = "featvis-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def cli_render(folder: Path, specs: list[str], out: Path, extra: list[str] = ()) -> dict[str, np.ndarray]:
    """Pixels of a separate `featvis render` process, one PNG per spec."""
    done = subprocess.run([sys.executable, "-m", "featvis", "render", "nets.py:small", *specs, *RENDER, *extra, "--out-dir",
                           str(out), "--json", "-q"], cwd=folder, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {row["spec"]: np.asarray(Image.open(row["path"]).convert("RGB")) for row in json.loads(done.stdout)}


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return write_project(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(project):
    serve = Serve(project, project / "cache", "--images", "photos", "--max-upload-mb", "0.5", "--fixed-batch")
    yield serve
    serve.stop()


def test_concurrent_unit_requests_are_batched_into_few_render_calls(server):
    """Eight unit pages opened at once: their 16 pictures (positive and negative) come from fewer render
    calls than pictures, each picture's sidecar naming the specs it was rendered with (the browser test
    compares one with a separate `featvis render` of those specs)."""
    before = server.json("/api/stats")
    pages: dict[int, list[str]] = {}
    threads = [threading.Thread(target=lambda c=c: pages.__setitem__(c, server.keys(f"/layer/conv3/{c}"))) for c in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    states = {c: server.wait(keys[0]) for c, keys in pages.items()}  # the positive picture of each
    stats = server.json("/api/stats")
    calls = stats["render_calls"] - before["render_calls"]
    pictures = stats["images"] - before["images"]
    assert pictures >= 16 and calls < pictures / 2, stats
    assert stats["largest_batch"] > 2
    for c, state in states.items():
        assert f"conv3:{c}" in state["meta"]["batch"] and state["spec"] == f"conv3:{c}"
        status, body, headers = server.get("/files/" + state["files"][0])
        assert status == 200 and headers["content-type"] == "image/png" and pixels(body).shape == (48, 48, 3)


def test_bad_input_answers_4xx_pages_naming_the_problem(server):
    cases = {
        "/layer/nosuch": (404, "unknown layer &#x27;nosuch&#x27;"),
        "/layer/conv2/12": (404, "channel 12 is out of range for layer &#x27;conv2&#x27;, which has 12 channels"),
        "/layer/conv2/-1": (404, "bad channel &#x27;-1&#x27;"),
        "/layer/conv2/1e3": (404, "bad channel"),
        "/layer/fc/5": (404, "channel 5 is out of range for layer &#x27;fc&#x27;, which has 5 channels"),
        "/layer/%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E/0": (404, "unknown layer &#x27;&lt;img src=x onerror=alert(1)&gt;&#x27;"),
        "/layer/%3Cscript%3Ealert(1)%3C%2Fscript%3E/0": (404, "no page at /layer/&lt;script&gt;alert(1)&lt;/script&gt;/0"),
        "/files/../../../etc/passwd": (404, "no"),
        "/files/layers/conv2/img/0-positive-0123456789.png": (404, "no finished picture"),
        "/files/nets.py": (404, "no finished picture"),
        "/examples/conv2/0/..%2F..%2Fnets.py": (404, "no"),
        "/photo/0123456789abcdef": (404, "no uploaded photo"),
        "/photo/..%2F..%2Fnets.py/input.png": (404, "no"),
        "/api/picture/" + "0" * 64: (404, "no picture"),
        "/nowhere": (404, "no page at /nowhere"),
    }
    for path, (code, text) in cases.items():
        status, body, _ = server.get(path)
        page = body.decode()
        assert status == code, (path, status, page[:200])
        assert text in page, (path, page[:500])
        assert "Traceback" not in page and "<script>alert" not in page and "<img src=x" not in page
    # uploads: not an image, nothing, too large (decoded through featvis's reader, limited before reading all)
    status, body, _ = server.get("/photo", *multipart("photo", "x.png", b"\x89PNG\r\n\x1a\nnot really"))
    assert status == 400 and "cannot read the upload" in body.decode()
    status, body, _ = server.get("/photo", *multipart("other", "x.png", b"data"))
    assert status == 400 and "no photo in the upload" in body.decode()
    for chunked in (False, True):  # refused by its declared length, or while it streams in
        status, text = post_raw(server.url + "/photo", *multipart("photo", "big.png", os.urandom(900 * 1024)), chunked=chunked)
        assert status == 413 and "more than this server takes (0.5 MB)" in text, (chunked, status, text[-400:])
    status, body, _ = server.get("/photo", b"garbage", {"Content-Type": "multipart/form-data; boundary=x"})
    assert status == 400
    assert server.get("/")[0] == 200  # still serving


def test_only_its_own_pages_drive_the_server(server):
    """DNS rebinding: a request naming another host is refused (421), whatever the path; a state-changing
    request from another origin is refused (403) before it queues anything; the server's own origin, and
    loopback names, work; every answer carries the security headers."""
    port = server.url.rsplit(":", 1)[1]
    calls = server.json("/api/stats")["render_calls"]
    for path in ("/", "/layer/conv2/0", "/api/stats"):
        status, body, _ = server.get(path, headers={"Host": f"attacker.example:{port}"})
        assert status == 421 and b"does not answer to host 'attacker.example'" in body
    assert server.get("/", headers={"Host": f"localhost:{port}"})[0] == 200
    for hostile in ({"Origin": "http://attacker.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                    {"Origin": f"http://localhost:{int(port) + 1}"}):
        status, body, _ = server.get("/api/enqueue/conv3/7", data=b"", headers=hostile)
        assert status == 403 and b"cross-origin" in body, hostile
        photo, headers = multipart("photo", "x.png", b"not an image")
        assert server.get("/photo", data=photo, headers={**headers, **hostile})[0] == 403
    for path in ("/layer/conv3/6", "/api/status?key=" + "0" * 64, "/api/stats"):  # fetched or embedded by another site
        for mode in ("no-cors", "cors"):
            status, body, _ = server.get(path, headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": mode})
            assert status == 403 and b"other sites' pages are refused" in body, (path, mode)
    assert server.json("/api/stats")["render_calls"] == calls
    followed = server.get("/layer/conv2/0", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert followed[0] == 200  # a link from elsewhere opens the page
    status, _, headers = server.get("/api/enqueue/conv3/7", data=b"", headers={"Origin": server.url, "Sec-Fetch-Site": "same-origin"})
    assert status == 200
    status, _, headers = server.get("/")
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["x-content-type-options"] == "nosniff" and lower["x-frame-options"] == "SAMEORIGIN"
    assert "frame-ancestors 'self'" in lower["content-security-policy"] and lower["referrer-policy"] == "same-origin"


def test_pages_escape_names_from_the_model(server):
    status, body, _ = server.get("/")
    page = body.decode()
    assert status == 200 and "odd&lt;b&gt;&amp;" in page and "odd<b>" not in page
    assert 'href="/layer/odd%3Cb%3E%26"' in page
    status, body, _ = server.get("/layer/odd%3Cb%3E%26/3")
    assert status == 200 and "<h1>odd&lt;b&gt;&amp;:3</h1>" in body.decode()


def test_restart_after_kill_9_mid_render_reuses_finished_pictures_and_never_serves_a_broken_one(server, project):
    """A second server on the same cache, killed with SIGKILL while it renders, leaves no final file; a
    broken file planted where that picture goes is never served; a restarted server shows the pictures
    finished before at once (no render) and renders the killed one again."""
    cache = project / "cache"
    done_key = server.keys("/layer/conv2/7")[0]
    finished = server.wait(done_key)
    slow = Serve(project, cache, env={"FEATVIS_TEST_SLEEP": "0.04"})  # a forward pass takes 40 ms
    try:
        key = slow.keys("/layer/conv1/2")[0]
        end = time.monotonic() + 60
        while slow.json(f"/api/picture/{key}")["progress"] == 0 and time.monotonic() < end:
            time.sleep(0.05)
        settings = slow.json(f"/api/picture/{key}")["settings"]
        slow.process.send_signal(signal.SIGKILL)
        slow.process.wait()
    finally:
        slow.stop()
    assert list((cache / "layers" / "conv1").rglob("*.png")) == []  # killed mid-render: no final file
    target = cache / "layers" / "conv1" / "img" / f"2-positive-{key[:10]}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # as a crash of some other writer could leave it
    again = Serve(project, cache)
    try:
        status, body, _ = again.get("/layer/conv2/7")
        assert status == 200 and f'data-done="{done_key}"' in body.decode()
        assert again.json("/api/stats")["render_calls"] == 0  # shown at once, from the cache
        assert again.get("/files/" + finished["files"][0])[1] == server.get("/files/" + finished["files"][0])[1]
        assert again.get(f"/files/layers/conv1/img/{target.name}")[0] == 404
        assert again.keys("/layer/conv1/2")[0] == key
        state = again.wait(key)
        assert state["settings"] == settings and state["files"] == [f"layers/conv1/img/{target.name}"]
        status, body, _ = again.get("/files/" + state["files"][0])
        assert status == 200 and pixels(body).shape == (48, 48, 3)
        assert target.read_bytes() == body  # the broken file was replaced by the complete picture
    finally:
        again.stop()


def gallery(folder: Path, out: Path, layers: str) -> dict:
    """A static `featvis gallery` of channels 0 and 1 (positive and negative) with the server's settings."""
    done = subprocess.run([sys.executable, "-m", "featvis", "gallery", "nets.py:small", "--layers", layers, "--channels", "0:2",
                           "--negative", "--no-filters", "-o", str(out), *RENDER, "--json", "-q"],
                          cwd=folder, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_static_gallery_and_the_serve_cache_share_one_folder(project):
    """`featvis serve --cache DIR` on a `featvis gallery --out DIR` shows the gallery's pictures without
    rendering (the very files), and what the server renders is recorded so that a later gallery run on
    the same folder skips it, keeps its file and shows it in the site."""
    shared = project / "shared"
    first = gallery(project, shared, "conv2")
    assert (first["made"], first["skipped"]) == (6, 0)  # 2 channels: positive, negative, description
    made = {p.name: p.read_bytes() for p in (shared / "layers" / "conv2" / "img").glob("*.png")}
    assert sorted(name.split("-")[1] for name in made) == ["negative", "negative", "positive", "positive"]
    serve = Serve(project, shared)
    try:
        for c in (0, 1):
            status, body, _ = serve.get(f"/layer/conv2/{c}")
            keys = re.findall(r'data-done="([0-9a-f]{64})"', body.decode())
            assert status == 200 and len(keys) == 2, body.decode()[:500]  # both shown finished at once
            for key in keys:
                (rel,) = serve.json(f"/api/picture/{key}")["files"]
                assert serve.get("/files/" + rel)[1] == made[Path(rel).name]  # the gallery's own file
        assert serve.json("/api/stats")["render_calls"] == 0
        rendered = {}
        for key in serve.keys("/layer/conv3/1"):
            (rel,) = serve.wait(key)["files"]
            rendered[rel] = (shared / rel).read_bytes()
    finally:
        serve.stop()
    stamps = {rel: (shared / rel).stat().st_mtime_ns for rel in rendered}
    second = gallery(project, shared, "conv2,conv3")
    # made: conv3:0's pictures and both descriptions of conv3; skipped: conv2 from itself, conv3:1's pictures from the server
    assert (second["made"], second["skipped"]) == (4, 8)
    site = (shared / "index.html").read_text(encoding="utf-8") + "".join(
        p.read_text(encoding="utf-8") for p in shared.rglob("*.html"))
    for rel, data in rendered.items():
        assert (shared / rel).read_bytes() == data and (shared / rel).stat().st_mtime_ns == stamps[rel]
        assert Path(rel).name in site
    assert len(list((shared / "layers" / "conv3" / "img").glob("*.png"))) == 4


def small_net(folder: Path):
    """The user's own nn.Sequential from nets.py, loaded in this process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_test_nets", folder / "nets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.small().net


def fragment(serve: Serve, path: str, timeout: float = 120.0) -> str:
    """A background section once computed (its URL answers 202 until then)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status, body, _ = serve.get(path)
        if status != 202:
            assert status == 200, (path, status, body[:300])
            return body.decode()
        time.sleep(0.2)
    raise AssertionError(f"{path} not ready after {timeout} s")


def field_rows(net, layer: str, unit: tuple[int, int], channel: int = 0) -> tuple[int, int]:
    """First and last input row that reach ``layer``'s unit: the support of its gradient in a copy with
    every weight positive and no bias (so every ReLU passes and no weight is zero)."""
    import copy

    import torch

    net = copy.deepcopy(net).double()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.constant_(module.weight, 1.0 / module.weight[0].numel())
            torch.nn.init.zeros_(module.bias)
    image = torch.ones(1, 3, 32, 32, dtype=torch.float64, requires_grad=True)
    seen = {}
    handle = getattr(net, layer).register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    try:
        net(image)
    finally:
        handle.remove()
    seen["out"][0, channel, unit[0], unit[1]].backward()
    rows = image.grad[0].abs().sum(dim=(0, 2)).nonzero().flatten()
    return int(rows[0]), int(rows[-1])


def test_layer_table_unit_sections_agree_with_pytorch(server, project):
    """What the pages say about the model, against PyTorch on the user's own module: output shapes
    (forward hooks), receptive field, stride and padding (the support of autograd gradients), circuits
    (for adjacent convolutions the expanded weight is the kernel itself, ranked by its norm; the ReLU
    between is passed over) and dataset examples (each photo prepared as torchvision's ImageNet evaluation
    does, resized to 256/224 of the input and centre-cropped, normalised with ImageNet's mean and std;
    its channel maximum over positions)."""
    import torch
    from torchvision.transforms import functional as TF

    net = small_net(project).eval()
    shapes = {}
    hooks = [getattr(net, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])))
             for name in ("conv1", "conv2", "conv3")]
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    index = server.get("/")[1].decode()
    for name, shape in shapes.items():
        top, bottom = field_rows(net, name, (8, 8))
        stride = field_rows(net, name, (9, 8))[0] - top
        size, padding = bottom - top + 1, stride * 8 - top
        cells = "".join(f"<td>{v}</td>" for v in ("×".join(map(str, shape)), f"{size}×{size}", f"{stride}×{stride}",
                                                   f"{padding}×{padding}"))
        assert f'<td class="muted">{name}</td><td>Conv2d</td>{cells}' in index, (name, cells)
    top, bottom = field_rows(net, "conv3", (8, 8), channel=4)
    unit = server.get("/layer/conv3/4")[1].decode()
    assert f"the central unit (8, 8) sees rows {top}..{bottom}, columns {top}..{bottom} of the 32 px input" in unit

    card = re.compile(r'<div>([^<]+):(\d+)</div></a>.*?\|w\| ([-+.e0-9]+) · Σ ([-+.e0-9]+)', re.DOTALL)
    for unit, kernels, other in (("conv3/4", net.conv3.weight[4], "conv2"), ("conv1/2", net.conv2.weight[:, 2], "conv2")):
        side = "inputs from" if unit.startswith("conv3") else "outputs to"
        html = fragment(server, f"/fragment/circuits/{unit}")
        section = html.split(f"Strongest {side} {other}</h3>", 1)[1].split("<h3>", 1)[0]
        found = [(layer, int(c), float(w), float(s)) for layer, c, w, s in card.findall(section)]
        norms = kernels.detach().double().flatten(1).norm(dim=1)
        order = norms.argsort(descending=True)[: len(found)].tolist()
        assert len(found) == 6 and [c for _, c, _, _ in found] == order and {layer for layer, *_ in found} == {other}
        for _, c, strength, total in found:
            assert strength == pytest.approx(float(norms[c]), rel=5e-3)
            assert total == pytest.approx(float(kernels[c].sum()), rel=5e-3, abs=1e-3)
    assert "relu3:" not in fragment(server, "/fragment/circuits/conv3/4")  # not its own ReLU, weight 1

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    best = {}
    for photo in sorted((project / "photos").glob("*.png")):
        image = TF.to_tensor(Image.open(photo).convert("RGB"))
        x = TF.normalize(TF.center_crop(TF.resize(image, round(32 * 256 / 224), antialias=True), 32), mean, std)[None]
        hook = net.conv2.register_forward_hook(lambda m, i, o, name=photo.name: best.__setitem__(name, float(o[0, 3].max())))
        with torch.no_grad():
            net(x)
        hook.remove()
    html = fragment(server, "/fragment/examples/conv2/3")
    shown = re.findall(r'<div>([-+.e0-9]+)</div><div class="muted">([^<]+)</div>', html)
    expected = sorted(best, key=best.get, reverse=True)
    assert [name for _, name in shown] == expected
    for value, name in shown:
        assert float(value) == pytest.approx(best[name], rel=5e-3)
