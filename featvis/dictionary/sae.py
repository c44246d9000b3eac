"""A sparse dictionary of a layer: feature directions in its channel space, and the layer they make.

A TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse autoencoders") encodes a
layer's activation vector ``x`` [C] at one position as ``f = TopK(ReLU(W_enc (x - b_dec) + b_enc))``
(``k`` features active) and reconstructs it as ``x_hat = f @ decoder + b_dec``, each decoder row a
unit-norm direction. Applied at every position of a [B, C, H, W] map, the encoder is a 1x1 convolution,
so the features of a dictionary are a layer of ``N`` channels (`FeatureLayer`): featvis attaches it to
a model (`featvis.dictionary.attach`) and every analysis works on features as on neurons.

A dictionary is two files in a folder: ``dictionary.pt``, a state dict of four tensors read with
``torch.load(weights_only=True)`` (loading runs no code from the file), and ``dictionary.json``, its
settings, metrics and the SHA-256 of the tensors' file, checked on every load.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .._util.errors import FeatvisError
from .._util.fileio import atomic_output, atomic_write_text, ensure_writable_dir
from ..models.weights import sha256_of
from ..receptive_field.rules import POINTWISE, register_rule

FORMAT = "featvis-dictionary/1"
WEIGHTS, SETTINGS = "dictionary.pt", "dictionary.json"
TENSORS = ("encoder", "encoder_bias", "decoder", "decoder_bias")
MAX_NUMBERS = 1 << 28  # numbers in one encoder or decoder (1 GiB in float32): what a file may make us allocate
SUFFIX = "_features"


def features_layer_name(layer: str) -> str:
    """The name of the layer of ``layer``'s dictionary features: ``mixed4c`` -> ``mixed4c_features``."""
    return f"{layer}{SUFFIX}"


def top_k(z: torch.Tensor, k: int, dim: int = 1) -> torch.Tensor:
    """``z`` with all but its ``k`` largest entries along ``dim`` set to 0, and negative ones too (TopK after ReLU)."""
    values, indices = z.topk(k, dim=dim)
    return torch.zeros_like(z).scatter(dim, indices, values.clamp(min=0))


class TopK(nn.Module):
    """The ``k`` largest of each position's channels, ReLU'd; the gradient passes straight through to all of them
    (a plain TopK has none where a feature is off, so a picture could never switch one on)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + (top_k(z, self.k) - z).detach()  # exactly top_k(z): x + (y - x) is y for these values


register_rule(TopK, lambda module: POINTWISE)  # per position: the receptive field is the encoder's


class FeatureLayer(nn.Module):
    """A dictionary's features as a layer: [B, C, H, W] activations in, [B, N, H, W] feature activations out.

    ``encoder`` is the 1x1 convolution giving each feature's pre-activation (its output is the layer
    ``LAYER_features_pre_relu``); ``select`` (`TopK`) keeps the ``k`` largest at each position. The values
    are exactly the dictionary's encoding. ``last`` is the value this layer computed in the current call
    (`featvis.dictionary.attach` compares it with what hooks made of it).
    """

    def __init__(self, dictionary: "Dictionary"):
        super().__init__()
        self.encoder = nn.Conv2d(dictionary.channels, dictionary.features, 1)
        with torch.no_grad():
            self.encoder.weight.copy_(dictionary.encoder[:, :, None, None])
            self.encoder.bias.copy_(dictionary.encoder_bias - dictionary.encoder @ dictionary.decoder_bias)
        self.select = TopK(dictionary.k)
        self.register_buffer("decoder", dictionary.decoder.clone())
        self.register_buffer("decoder_bias", dictionary.decoder_bias.clone())
        self.requires_grad_(False)
        self.last: torch.Tensor | None = None

    def forward(self, acts: torch.Tensor) -> torch.Tensor:
        self.last = self.select(self.encoder(acts))
        return self.last

    def decode(self, features: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """[B, N, H, W] feature activations -> [B, C, H, W] (``bias=False``: the change a change of features makes)."""
        out = torch.einsum("bnhw,nc->bchw", features, self.decoder.to(features.dtype))
        return out + self.decoder_bias.to(out.dtype)[:, None, None] if bias else out


@dataclass
class Dictionary:
    """A sparse dictionary of ``layer``: ``decoder`` [N, C] unit-norm feature directions in the layer's channel
    space, the encoder ``encoder`` [N, C] and ``encoder_bias`` [N], ``decoder_bias`` [C], ``k`` active features.
    ``info``: how it was made and its metrics (the ``--json`` of `featvis dictionary`)."""

    layer: str
    encoder: torch.Tensor
    encoder_bias: torch.Tensor
    decoder: torch.Tensor
    decoder_bias: torch.Tensor
    k: int
    method: str = "topk"
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, c = self.decoder.shape
        shapes = {"encoder": (n, c), "encoder_bias": (n,), "decoder_bias": (c,)}
        bad = [name for name, shape in shapes.items() if tuple(getattr(self, name).shape) != shape]
        if bad or not 1 <= self.k < n:
            raise FeatvisError(f"a dictionary of {n} features over {c} channels needs encoder [{n}, {c}], encoder_bias "
                               f"[{n}], decoder_bias [{c}] and 1 <= k < {n}; {', '.join(bad) or f'k={self.k}'} do not fit")

    @property
    def features(self) -> int:
        return self.decoder.shape[0]

    @property
    def channels(self) -> int:
        return self.decoder.shape[1]

    @property
    def name(self) -> str:
        """The layer its features make: ``LAYER_features``."""
        return features_layer_name(self.layer)

    def layer_module(self) -> FeatureLayer:
        return FeatureLayer(self)

    @torch.no_grad()
    def encode(self, acts: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] activations of the layer -> [B, N, H, W] feature activations (at most ``k`` nonzero per position)."""
        if acts.dim() != 4 or acts.shape[1] != self.channels:
            raise FeatvisError(f"encode takes [B, {self.channels}, H, W] activations of {self.layer}, got {tuple(acts.shape)}")
        return self.layer_module().to(acts.device)(acts.float())

    @torch.no_grad()
    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, H, W] feature activations -> the reconstructed activations [B, C, H, W]."""
        return self.layer_module().to(features.device).decode(features.float())

    def loads(self, threshold: float = 0.3) -> torch.Tensor:
        """[N, C] bool: feature n loads on neuron c where its decoder direction's weight there is at least
        ``threshold`` (a unit direction spread over few neurons has large weights on them)."""
        return self.decoder.abs() >= threshold

    def polysemanticity(self, threshold: float = 0.3) -> torch.Tensor:
        """[C] how many features load on each neuron (`loads`): the neuron's count of meanings."""
        return self.loads(threshold).sum(0)

    def save(self, out: str | os.PathLike) -> Path:
        """Write ``dictionary.pt`` (tensors) and ``dictionary.json`` (settings, metrics, the tensors' SHA-256) in ``out``, atomically."""
        root = ensure_writable_dir(out)
        with atomic_output(root / WEIGHTS) as tmp:
            torch.save({name: getattr(self, name).detach().float().cpu().contiguous() for name in TENSORS}, tmp)
        settings = {"format": FORMAT, "layer": self.layer, "features": self.features, "channels": self.channels,
                    "k": self.k, "method": self.method, "sha256": sha256_of(root / WEIGHTS), "info": self.info}
        atomic_write_text(root / SETTINGS, json.dumps(settings, indent=1) + "\n")
        return root


def load_dictionary(path: str | os.PathLike) -> Dictionary:
    """The dictionary saved in folder ``path`` (`Dictionary.save`). Its tensors' file must match the SHA-256 in
    its settings and the sizes they state (bounded); it is read with ``weights_only=True``: no code runs."""
    root = Path(path)
    if not (root / SETTINGS).is_file():
        raise FeatvisError(f"--dictionary {root}: no {SETTINGS} there; give a folder written by `featvis dictionary`")
    try:
        settings = json.loads((root / SETTINGS).read_text(encoding="utf-8"))
        layer, n, c, k = str(settings["layer"]), int(settings["features"]), int(settings["channels"]), int(settings["k"])
        expected = str(settings["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FeatvisError(f"--dictionary {root}: unreadable {SETTINGS} ({exc}); write it again with `featvis dictionary`") from None
    if settings.get("format") != FORMAT:
        raise FeatvisError(f"--dictionary {root}: format {settings.get('format')!r}, not {FORMAT}; train it again")
    if not (1 <= n and 1 <= c and n * c <= MAX_NUMBERS):
        raise FeatvisError(f"--dictionary {root}: {n} features x {c} channels is beyond {MAX_NUMBERS} numbers")
    weights = root / WEIGHTS
    if not weights.is_file() or sha256_of(weights) != expected:
        raise FeatvisError(f"--dictionary {root}: {WEIGHTS} is missing or does not match the SHA-256 in {SETTINGS} "
                           "(damaged or changed); train it again")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        tensors = {name: state[name].float() for name in TENSORS}
    except Exception as exc:  # noqa: BLE001 - a damaged file is the user's to replace
        raise FeatvisError(f"--dictionary {root}: cannot read {WEIGHTS} ({type(exc).__name__}); train it again") from None
    if tensors["decoder"].shape != (n, c):
        raise FeatvisError(f"--dictionary {root}: its decoder is {tuple(tensors['decoder'].shape)}, not [{n}, {c}]")
    if not all(bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise FeatvisError(f"--dictionary {root}: its tensors hold NaN or infinite values; train it again")
    return Dictionary(layer, k=k, method=str(settings.get("method", "topk")), info=dict(settings.get("info") or {}), **tensors)


def default_features(channels: int) -> int:
    """Features when none are asked for: 4 per channel (Gorton 2024 and Gao et al. use 4x to 32x)."""
    return 4 * channels


def default_k(features: int) -> int:
    """Active features when none are asked for: 32 (Gao et al.'s smallest), under half the features."""
    return max(1, min(32, math.ceil(features / 2) - 1))
