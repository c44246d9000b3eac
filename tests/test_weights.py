"""The weights resolver, tested for real: a loopback HTTP server serves a copy of the files."""

from __future__ import annotations

import http.server
import shutil
import threading
from pathlib import Path

import pytest
import torch

import featvis
from featvis.models.weights import BVLC_GOOGLENET, CACHE_ENV, URL_ENV, WEIGHTS_ENV

CORRUPT = "weights/inception_4a/5x5_filter.bin"
TRUNCATED = "weights/inception_3b/3x3_filter.bin"


class Mirror:
    """A real HTTP server on 127.0.0.1 serving a copy of the upstream layout, with fault injection."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        self.truncate: set[str] = set()
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):
                mirror.requests.append(self.path)
                if any(self.path.endswith(t) for t in mirror.truncate):
                    data = (root / self.path.lstrip("/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])  # the connection drops mid-transfer
                    self.wfile.flush()
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(weights_dir, tmp_path, monkeypatch):
    root = tmp_path / "upstream"
    shutil.copytree(weights_dir / "bvlc_googlenet", root / BVLC_GOOGLENET.upstream_folder)
    server = Mirror(root)
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(URL_ENV, server.url)
    yield server
    server.close()


def _flip_byte(path: Path) -> bytes:
    original = path.read_bytes()
    path.write_bytes(original[:100] + bytes([original[100] ^ 0xFF]) + original[101:])
    return original


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_download_verifies_resumes_and_converts_once(mirror, inceptionv1, tmp_path):
    cache = tmp_path / "cache"
    served = mirror.root / BVLC_GOOGLENET.upstream_folder / CORRUPT
    original = _flip_byte(served)

    with pytest.raises(featvis.FeatvisError, match="SHA-256 mismatch"):
        featvis.load_model("inceptionv1", progress=False)
    assert not (cache / "bvlc_googlenet" / CORRUPT).exists(), "a corrupt download must not enter the cache"
    assert not (cache / "bvlc_googlenet.pt").exists() and not _leftovers(cache)
    fetched_before = {p.relative_to(cache / "bvlc_googlenet").as_posix() for p in (cache / "bvlc_googlenet").rglob("*.bin")}
    assert fetched_before, "files before the corrupt one were kept"

    served.write_bytes(original)
    mirror.requests.clear()
    model = featvis.load_model("inceptionv1", progress=False)
    requested = {r.split(BVLC_GOOGLENET.upstream_folder + "/", 1)[1] for r in mirror.requests}
    all_files = {k for k in BVLC_GOOGLENET.manifest() if k.startswith("weights/")}
    assert requested == all_files - fetched_before, "verified files are skipped on rerun"
    assert (cache / "bvlc_googlenet.pt").is_file()

    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), inceptionv1(x)), "downloaded weights equal the local release"

    mirror.requests.clear()
    again = featvis.load_model("inceptionv1", progress=False)
    assert mirror.requests == [], "the converted single-file state dict is used without network"
    with torch.no_grad():
        assert torch.equal(again(x), inceptionv1(x))


def test_transfer_cut_short_leaves_nothing(mirror, tmp_path):
    mirror.truncate.add(TRUNCATED)
    with pytest.raises(featvis.FeatvisError, match="cut short"):
        featvis.load_model("inceptionv1", progress=False)
    cache = tmp_path / "cache" / "bvlc_googlenet"
    assert not (cache / TRUNCATED).exists() and not _leftovers(cache)


def test_offline_without_weights_names_setting_and_source(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9")  # discard port: nothing listens, connection refused
    with pytest.raises(featvis.FeatvisError) as info:
        featvis.load_model("inceptionv1", progress=False)
    message = str(info.value)
    assert WEIGHTS_ENV in message and "127.0.0.1:9/models/bvlc_googlenet" in message and "\n" not in message


def test_corrupt_local_weights_are_named(weights_dir, tmp_path, monkeypatch):
    local = tmp_path / "weights"
    shutil.copytree(weights_dir / "bvlc_googlenet", local / "bvlc_googlenet")
    _flip_byte(local / "bvlc_googlenet" / CORRUPT)
    monkeypatch.setenv(WEIGHTS_ENV, str(local))
    with pytest.raises(featvis.FeatvisError, match=r"corrupt weights file .*5x5_filter.bin"):
        featvis.load_model("inceptionv1", progress=False)
    (local / "bvlc_googlenet" / CORRUPT).write_bytes(b"\0" * 12)
    with pytest.raises(featvis.FeatvisError, match="5x5_filter.bin"):
        featvis.load_model("inceptionv1", weights=local, progress=False)


def test_explicit_path_wins_over_environment(weights_dir, tmp_path, monkeypatch, inceptionv1):
    torch.save(inceptionv1.net.state_dict(), tmp_path / "googlenet.pt")
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9")
    model = featvis.load_model("inceptionv1", weights=tmp_path / "googlenet.pt")
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), inceptionv1(x))
    (tmp_path / "broken.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(featvis.FeatvisError, match="cannot load weights .*broken.pt"):
        featvis.load_model("inceptionv1", weights=tmp_path / "broken.pt")
