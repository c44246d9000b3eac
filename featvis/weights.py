"""Finding, downloading, verifying and converting pretrained weights.

One resolver for every release of Caffe weights featvis knows (BVLC GoogLeNet, SqueezeNet 1.1):

    explicit path  >  $FEATVIS_WEIGHTS_DIR/<release>/  >  user cache  >  download from upstream

Raw files are checked against the SHA-256 manifests shipped in ``featvis/data``; downloads are
written atomically (a corrupt or cut-short transfer never lands in the cache), verified files
are skipped on rerun, and a finished download is converted once into a cached single-file
state dict (``<cache>/<release>.pt``), loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .errors import FeatvisError
from .fileio import atomic_output

WEIGHTS_ENV = "FEATVIS_WEIGHTS_DIR"
CACHE_ENV = "FEATVIS_CACHE_DIR"
URL_ENV = "FEATVIS_WEIGHTS_URL"
UPSTREAM = "https://raw.githubusercontent.com/chaosmail/caffejs/424d98682b50dd88d0b8cca401c66855709bd013"


@dataclass(frozen=True)
class CaffeRelease:
    """A folder of raw Caffe blobs: ``weights/<layer>_filter.bin`` and ``_bias.bin``."""

    name: str  # folder name under FEATVIS_WEIGHTS_DIR and in the cache
    upstream_folder: str  # folder in the upstream repository

    def manifest(self) -> dict[str, str]:
        """Relative path -> SHA-256 of every file of the release (shipped with featvis)."""
        text = resources.files("featvis").joinpath(f"data/{self.name}.sha256").read_text("utf-8")
        return {path: digest for digest, path in (line.split(maxsplit=1) for line in text.splitlines() if line.strip())}

    def source(self) -> str:
        return f"{base_url()}/{self.upstream_folder}"


BVLC_GOOGLENET = CaffeRelease("bvlc_googlenet", "models/bvlc_googlenet")
SQUEEZENET1_1 = CaffeRelease("squeezenet1_1", "models/squeezenet")


def base_url() -> str:
    """Upstream location, overridable with $FEATVIS_WEIGHTS_URL (a mirror)."""
    return os.environ.get(URL_ENV, UPSTREAM).rstrip("/")


def cache_dir() -> Path:
    """$FEATVIS_CACHE_DIR, else $XDG_CACHE_HOME/featvis, else ~/.cache/featvis."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "featvis"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_release(release: CaffeRelease, folder: Path) -> None:
    """Check every file of ``folder`` against the release manifest; name the first bad one."""
    for rel, digest in release.manifest().items():
        if not rel.startswith("weights/"):
            continue
        file = folder / rel
        if not file.is_file():
            raise FeatvisError(f"weights file missing: {file}; copy the complete {release.name} folder or delete it to re-download")
        if sha256_of(file) != digest:
            raise FeatvisError(f"corrupt weights file {file} (SHA-256 mismatch); replace it with the original from {release.source()}")


def download_release(release: CaffeRelease, folder: Path, progress: bool = True) -> Path:
    """Download the release's files into ``folder``, verifying each; verified files are skipped."""
    files = {rel: digest for rel, digest in release.manifest().items() if rel.startswith("weights/")}
    with tqdm(total=len(files), unit="file", desc=f"downloading {release.name}", disable=not progress) as bar:
        for rel, digest in files.items():
            target = folder / rel
            if not (target.is_file() and sha256_of(target) == digest):
                _download_file(f"{release.source()}/{rel}", target, digest)
            bar.update(1)
    return folder


def _download_file(url: str, target: Path, digest: str) -> None:
    hasher = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as response, atomic_output(target) as tmp:
            expected = int(response.headers.get("Content-Length") or -1)
            received = 0
            with open(tmp, "wb") as out:
                for chunk in iter(lambda: response.read(1 << 16), b""):
                    out.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
            if expected >= 0 and received != expected:
                raise FeatvisError(f"download of {url} was cut short ({received} of {expected} bytes); run again to resume")
            if hasher.hexdigest() != digest:
                raise FeatvisError(f"download of {url} failed verification (SHA-256 mismatch); nothing was cached, check the mirror ({URL_ENV})")
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise FeatvisError(
            f"cannot download {url} ({reason}); work offline by setting {WEIGHTS_ENV} to a folder holding the "
            f"weights (see README), or pass --weights"
        ) from None


def read_caffe_state_dict(net: nn.Module, layers: Mapping[str, str], folder: Path) -> dict[str, torch.Tensor]:
    """Read raw Caffe blobs into a state dict for ``net``.

    ``layers`` maps a module path of ``net`` (a Conv2d or Linear) to its Caffe layer name.
    Filters are stored (out, kh, kw, in) and permuted to PyTorch's (out, in, kh, kw).
    """
    modules = dict(net.named_modules())
    state: dict[str, torch.Tensor] = {}
    for path, caffe in layers.items():
        module = modules[path]
        weight_shape = tuple(module.weight.shape)
        out_ch, in_ch, *kernel = weight_shape if len(weight_shape) == 4 else (*weight_shape, 1, 1)
        filt = _read_blob(folder / "weights" / f"{caffe}_filter.bin", out_ch * in_ch * int(np.prod(kernel)))
        filt = filt.reshape(out_ch, *kernel, in_ch).transpose(0, 3, 1, 2).reshape(weight_shape)
        state[f"{path}.weight"] = torch.from_numpy(np.ascontiguousarray(filt))
        state[f"{path}.bias"] = torch.from_numpy(_read_blob(folder / "weights" / f"{caffe}_bias.bin", out_ch))
    return state


def _read_blob(file: Path, count: int) -> np.ndarray:
    if not file.is_file():
        raise FeatvisError(f"weights file missing: {file}; point {WEIGHTS_ENV} at a complete weights folder")
    size = file.stat().st_size
    if size != 4 * count:
        raise FeatvisError(f"weights file {file} has {size} bytes, expected {4 * count}: wrong or corrupt file; replace it")
    return np.fromfile(file, dtype="<f4").astype(np.float32)


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict saved with torch.save, safely (weights_only=True)."""
    if not path.is_file():
        raise FeatvisError(f"weights file not found: {path}; check the --weights path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise FeatvisError(f"cannot load weights {path} ({reason}); give a state dict saved with torch.save") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FeatvisError(f"{path} does not hold a state dict of tensors; save one with torch.save(model.state_dict(), path)")
    return state


def apply_state_dict(net: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net``; a mismatch is a one-line error naming the first bad tensor."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise FeatvisError(f"weights {source} do not fit this model ({detail}); give weights saved from the same architecture")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise FeatvisError(
                f"weights {source} do not fit this model ({key} has shape {list(tensor.shape)}, "
                f"the model needs {list(own[key].shape)}); give weights saved from the same architecture"
            )
    net.load_state_dict(state)


def load_caffe_weights(
    net: nn.Module, release: CaffeRelease, layers: Mapping[str, str], explicit: str | os.PathLike | None = None, progress: bool = True
) -> str:
    """Fill ``net`` with the release's weights, found as the module docstring says; return the source used."""
    if explicit is not None:
        path = Path(explicit)
        if path.is_dir():
            folder = path / release.name if (path / release.name / "weights").is_dir() else path
            verify_release(release, folder)
            apply_state_dict(net, read_caffe_state_dict(net, layers, folder), str(folder))
            return str(folder)
        apply_state_dict(net, load_state_dict_file(path), str(path))
        return str(path)
    env = os.environ.get(WEIGHTS_ENV)
    if env and (Path(env) / release.name / "weights").is_dir():
        folder = Path(env) / release.name
        verify_release(release, folder)
        apply_state_dict(net, read_caffe_state_dict(net, layers, folder), str(folder))
        return str(folder)
    converted = cache_dir() / f"{release.name}.pt"
    if converted.is_file():
        apply_state_dict(net, load_state_dict_file(converted), str(converted))
        return str(converted)
    folder = download_release(release, cache_dir() / release.name, progress=progress)
    state = read_caffe_state_dict(net, layers, folder)
    with atomic_output(converted) as tmp:
        torch.save(state, tmp)
    apply_state_dict(net, state, str(folder))
    return str(converted)


def find_weights_file(filename: str, explicit: str | os.PathLike | None, source: str) -> Path:
    """A single-file state dict that featvis cannot download (no published SHA-256 to verify it):
    ``explicit`` (a file, or a folder holding ``filename``) > ``$FEATVIS_WEIGHTS_DIR/<filename>`` >
    ``<user cache>/<filename>``, else a one-line
    error naming ``source`` (where to get it) and these places."""
    if explicit is not None:
        return Path(explicit) / filename if Path(explicit).is_dir() else Path(explicit)
    env = os.environ.get(WEIGHTS_ENV)
    for candidate in ([Path(env) / filename] if env else []) + [cache_dir() / filename]:
        if candidate.is_file():
            return candidate
    raise FeatvisError(
        f"{filename} not found: download it from {source} (no published SHA-256, so featvis does not fetch it) "
        f"and pass --weights FILE, or put it in ${WEIGHTS_ENV} or {cache_dir()}"
    )
