"""Finding, downloading, verifying and converting pretrained weights.

One resolver for every release of Caffe weights featvis knows (BVLC GoogLeNet, SqueezeNet 1.1):

    explicit path  >  $FEATVIS_WEIGHTS_DIR/<release>/  >  user cache  >  download from upstream

Raw files are checked against the SHA-256 manifests shipped in ``featvis/data``; downloads are
written atomically (a corrupt or cut-short transfer never lands in the cache), verified files
are skipped on rerun, and a finished download is converted once into a cached single-file
state dict (``<cache>/<release>.pt``), loaded with ``torch.load(weights_only=True)``. That file
is verified too, against the digest of its tensors shipped in ``featvis/data``
(``<release>.state.sha256``, independent of torch's file format): a modified or damaged one is
rebuilt from the verified release files, or, without them, named as the file to delete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from .._util.errors import FeatvisError
from .._util.fileio import atomic_output, ensure_writable_dir
from .._util.progress import progress_bar
from .._util.settings import CACHE_ENV, WEIGHTS_ENV, setting_path

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

    def state_digest(self) -> str:
        """`state_digest` of the converted state dict (shipped with featvis)."""
        return resources.files("featvis").joinpath(f"data/{self.name}.state.sha256").read_text("utf-8").split()[0]


BVLC_GOOGLENET = CaffeRelease("bvlc_googlenet", "models/bvlc_googlenet")
SQUEEZENET1_1 = CaffeRelease("squeezenet1_1", "models/squeezenet")


def base_url() -> str:
    """Upstream location, overridable with $FEATVIS_WEIGHTS_URL (a mirror: an http, https or file URL)."""
    url = os.environ.get(URL_ENV, UPSTREAM).rstrip("/")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.path):
        raise FeatvisError(f"{URL_ENV}={url!r} is not a URL; give a mirror's address such as https://host/path, or unset it")
    return url


def cache_dir() -> Path:
    """$FEATVIS_CACHE_DIR, else $XDG_CACHE_HOME/featvis, else ~/.cache/featvis."""
    cache = setting_path(CACHE_ENV)
    if cache is not None:
        return cache
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "featvis"


def _writable_cache() -> Path:
    """The cache folder, created; a failure names the setting that moves it."""
    folder = cache_dir()
    try:
        return ensure_writable_dir(folder)
    except FeatvisError as exc:
        raise FeatvisError(f"{str(exc).split('; ')[0]} for the weights cache; set {CACHE_ENV} to a writable folder, "
                           f"or {WEIGHTS_ENV} to a folder holding the weights") from None


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and values, in key order: the same for the
    same tensors whatever file format they were saved in."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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
    with progress_bar(len(files), f"downloading {release.name}", "files", enabled=progress, leave=True) as bar:
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
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        if isinstance(exc, FeatvisError):
            raise
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
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        refused = next((line for line in lines if "GLOBAL" in line), None)
        if isinstance(exc, pickle.UnpicklingError) and refused:  # weights_only met a Python object that is no tensor
            raise FeatvisError(f"refused to load weights {path}: the file holds Python objects besides tensors "
                               f"({refused.rstrip('.')}), which could run code; save a plain state dict with "
                               "torch.save(model.state_dict(), path)") from None
        if isinstance(exc, pickle.UnpicklingError) and len(lines) > 2:  # torch's advice first, the reason last
            reason = lines[-2] if lines[-1].startswith("Check the documentation") else lines[-1]
        else:
            reason = lines[0].split(". ")[0]
        raise FeatvisError(f"cannot load weights {path} ({reason[:160]}); give a state dict saved with torch.save") from None
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
    env = setting_path(WEIGHTS_ENV)
    if env is not None and not env.is_dir():
        raise FeatvisError(f"{WEIGHTS_ENV} is set to {env}, which does not exist; point it at the folder holding "
                           f"{release.name}/ (see README) or unset it to use the cache and download")
    if env is not None and (env / release.name / "weights").is_dir():
        folder = env / release.name
        verify_release(release, folder)
        apply_state_dict(net, read_caffe_state_dict(net, layers, folder), str(folder))
        return str(folder)
    converted = cache_dir() / f"{release.name}.pt"
    if converted.is_file():
        state = _cached_state(converted, release)
        if state is not None:
            apply_state_dict(net, state, str(converted))
            return str(converted)
    folder = download_release(release, _writable_cache() / release.name, progress=progress)
    state = read_caffe_state_dict(net, layers, folder)
    with atomic_output(converted) as tmp:
        torch.save(state, tmp)
    apply_state_dict(net, state, str(folder))
    return str(converted)


def _cached_state(converted: Path, release: CaffeRelease) -> dict[str, torch.Tensor] | None:
    """The cached state dict if its tensors match the release; None (rebuild it) if they do not
    but the release's raw files beside it verify; otherwise a one-line error naming the file."""
    try:
        state = load_state_dict_file(converted)
        problem = None if state_digest(state) == release.state_digest() else "its tensors differ from the release"
    except FeatvisError as exc:
        state, problem = None, str(exc).split("; ")[0]
    if problem is None:
        return state
    try:
        verify_release(release, converted.parent / release.name)
    except FeatvisError:
        raise FeatvisError(f"cached weights {converted} are damaged or modified ({problem}); delete {converted} "
                           "and run again to download the weights afresh") from None
    warnings.warn(f"cached weights {converted} were damaged or modified ({problem}); rebuilt from the verified release files")
    return None
def find_weights_file(filename: str, explicit: str | os.PathLike | None, source: str) -> Path:
    """A single-file state dict that featvis cannot download (no published SHA-256 to verify it):
    ``explicit`` (a file, or a folder holding ``filename``) > ``$FEATVIS_WEIGHTS_DIR/<filename>`` >
    ``<user cache>/<filename>``, else a one-line
    error naming ``source`` (where to get it) and these places."""
    if explicit is not None:
        return Path(explicit) / filename if Path(explicit).is_dir() else Path(explicit)
    env = setting_path(WEIGHTS_ENV)
    for candidate in ([env / filename] if env else []) + [cache_dir() / filename]:
        if candidate.is_file():
            return candidate
    raise FeatvisError(
        f"{filename} not found: download it from {source} (no published SHA-256, so featvis does not fetch it) "
        f"and pass --weights FILE, or put it in ${WEIGHTS_ENV} or {cache_dir()}"
    )
