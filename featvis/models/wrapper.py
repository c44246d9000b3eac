"""`FeatvisModel`: any CNN wrapped so that users always feed RGB images in [0, 1].

The wrapper owns what differs between models — channel order, value scale, mean/std, the
input size for photos, class labels and layer-name aliases — so every analysis in featvis
(probe, optvis, receptive fields, saliency) works on one convention.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import itertools
import warnings
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parameter import is_lazy

from .._util.errors import FeatvisError
from .modes import analysis, eval_mode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ITU-R BT.601 luma, as PIL's convert("L") and torchvision's Grayscale weigh R, G, B.
LUMA = (0.299, 0.587, 0.114)


class FeatvisModel(nn.Module):
    """A network plus its input convention; ``forward`` takes RGB in [0, 1], shape [N, 3, H, W].

    ``net`` sees ``(flip_to_bgr(x) * scale - mean) / std``, or ``preprocess(x)`` when a
    preprocessing callable is given. A grayscale network (``grayscale``; by default: see
    `_reads_one_channel`) sees the image's luma (`LUMA`) instead, normalised by a one-value
    ``mean``/``std`` (default 0 and 1: the [0, 1] of ``ToTensor()``). ``aliases`` maps extra layer
    names to module paths of ``net`` (e.g. ``mixed4a`` -> ``inception4a``). ``concats`` names layers that no module
    outputs: the concatenation along channels of several modules' outputs (e.g. Lucid's
    ``mixed4a_pre_relu``, the four branches of ``inception4a`` before their ReLUs); probes and
    renders take them, analyses that need one module (receptive fields, saliency) refuse them.

    A module that runs several times in one forward pass (one activation module shared by every
    block, as EfficientNet's ``_swish`` or torchvision ResNet's ``relu``) has one output per call:
    ``name#k`` names its k-th call (``#1`` the first) and every analysis of outputs takes exactly that
    call; the bare name is the first call, with a warning naming the others (`site`). The calls are
    counted once per model, on a hook-free copy of the module tree (`count_calls`).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        name: str = "model",
        input_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        bgr: bool = False,
        scale: float = 1.0,
        labels: Sequence[str] | None = None,
        aliases: Mapping[str, str] | None = None,
        concats: Mapping[str, Sequence[str]] | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        grayscale: bool | None = None,
    ):
        super().__init__()
        self.grayscale = _reads_one_channel(net, input_size, mean, std) if grayscale is None else bool(grayscale)
        mean = (0.0,) if self.grayscale and mean is None else mean if mean is not None else IMAGENET_MEAN
        std = (1.0,) if self.grayscale and std is None else std if std is not None else IMAGENET_STD
        check_normalisation(name, self.grayscale, mean, std)
        self.net = net
        self.name = name
        self.input_size = int(input_size)
        self.bgr = bgr
        self.scale = float(scale)
        self.labels = list(labels) if labels is not None else None
        self.aliases = dict(aliases or {})
        self.preprocess = preprocess
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self._paths = {path for path, _ in net.named_modules() if path}
        self.concats = {layer: tuple(parts) for layer, parts in (concats or {}).items()}
        clashes = [layer for layer in self.concats if layer in self._paths or layer in self.aliases]
        unknown = [path for parts in self.concats.values() for path in parts if path not in self._paths]
        if clashes or unknown:
            raise FeatvisError(f"bad concat layers for {self.name}: {', '.join(clashes + unknown)} clash with module names "
                               "or aliases or are not module paths; give new names, and module paths as parts")
        self._call_counts: dict[str, int] | None = None
        self._told_first_call: set[str] = set()
        #: ``LAYER_features`` -> its `featvis.dictionary.Dictionary`, for the dictionaries attached (`attach_dictionary`)
        self.dictionaries: dict = {}

    @classmethod
    def wrap(cls, net: "nn.Module | FeatvisModel", **kwargs) -> "FeatvisModel":
        """Wrap a user CNN (ImageNet mean/std unless given); a FeatvisModel is returned as is."""
        return net if isinstance(net, FeatvisModel) else cls(net, **kwargs)

    # --- input -----------------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Map RGB in [0, 1] to what ``net`` expects."""
        if self.preprocess is not None:
            return self.preprocess(x)
        if self.bgr:
            x = x.flip(1)
        if self.grayscale:
            x = (x * x.new_tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return (x * self.scale - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    def prepare(self, image: torch.Tensor) -> torch.Tensor:
        """Resize a photo [3, H, W] (shorter side to 256/224 of the input size) and centre-crop it."""
        return prepare_image(image, self.input_size).to(self.mean.device)

    # --- layers ----------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        """Module paths of ``net`` in definition order (every one is addressable)."""
        return [path for path, _ in self.net.named_modules() if path]

    def sites(self) -> list[str]:
        """Every output a layer name can mean (`site`), in definition order: a module path, or
        ``path#1`` .. ``path#n`` for a module that runs n times."""
        return [site_name(path, k, self.calls(path)) for path in self.layer_names() for k in range(1, (self.calls(path) or 1) + 1)]

    def aliases_of(self, path: str) -> list[str]:
        return [alias for alias, target in self.aliases.items() if target == path]

    def calls(self, path: str) -> int | None:
        """How many times the module at ``path`` runs in one forward pass (`count_calls`, once per model);
        None where it could not count: a bare name is then the module's first call, as always, and a call
        ``#k`` is checked when the model runs."""
        if self._call_counts is None:
            self._call_counts = count_calls(self) or {"": -1}
        return None if "" in self._call_counts else max(1, self._call_counts.get(path, 1))

    def resolve(self, layer: str) -> str:
        """The module path for a layer name or alias, with or without a call (``name#k``); unknown names
        list the closest valid ones. For a module's parameters (filters, weights): the call does not matter.

        A concat layer has no single module: it is refused with the names of its parts. A path written
        from the wrapper (``net.`` + a module path of the user's network, as ``FeatvisModel.net`` holds it) is that path.
        """
        name, call = self._split(layer)
        path = self._resolve_name(name)
        count = self.calls(path)
        if call is not None and count is not None and not 1 <= call <= count:
            raise FeatvisError(f"layer '{name}' runs {count} time(s) in one forward pass of {self.name}, so call "
                               f"#{call} does not exist; name a call from #1 to #{count}")
        return path

    def site(self, layer: str) -> str:
        """The output a layer name means: its module path, or ``path#k`` for call k of a module that runs
        several times (``#1`` of a module that runs once is the module). The bare name of such a module
        means its first call in every analysis, as it always has, and says so once per model in a warning
        naming the calls: they differ in shape and receptive field."""
        path = self.resolve(layer)
        name, call = self._split(layer)
        count = self.calls(path)
        if count == 1 or (count is None and call is None):
            return path
        if call is None and name not in self._told_first_call:
            self._told_first_call.add(name)
            warnings.warn(f"layer '{name}' runs {count} times in one forward pass of {self.name}; featvis takes its "
                          f"first call, {name}{CALL_MARK}1 (name another, up to {name}{CALL_MARK}{count}; "
                          "`featvis layers MODEL` shows each call's shape)", stacklevel=2)
        return f"{path}{CALL_MARK}{call or 1}"

    def _split(self, layer: str) -> tuple[str, int | None]:
        """`split_call`, except that a name or alias of its own is never a call (``_swish#2_features``)."""
        return (layer, None) if layer in self._paths or layer in self.aliases else split_call(layer)

    def _resolve_name(self, layer: str) -> str:
        if layer in self._paths:
            return layer
        if layer in self.aliases:
            return self.aliases[layer]
        if layer.startswith("net.") and layer[4:] in self._paths:
            return layer[4:]
        if layer in self.concats:
            parts = self.concats[layer]
            example = (self.aliases_of(parts[0]) or [parts[0]])[0]
            raise FeatvisError(f"layer '{layer}' concatenates {len(parts)} modules ({', '.join(parts)}), not one; "
                               f"here name a single module, e.g. its part {example}")
        candidates = sorted(self._paths | set(self.aliases) | set(self.concats))
        close = difflib.get_close_matches(layer, candidates, n=5, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else "list them with `featvis layers MODEL`"
        raise FeatvisError(f"unknown layer '{layer}' in {self.name}; {hint}")

    def parts(self, layer: str) -> tuple[str, ...]:
        """The sites (`site`: module paths, ``path#k`` for one call of a shared module) whose outputs,
        concatenated along channels, are ``layer``'s output: one for a module or alias, several for a
        concat layer. Also a cache key per layer."""
        return tuple(self.site(part) for part in self.concats[layer]) if layer in self.concats else (self.site(layer),)

    def module(self, layer: str) -> nn.Module:
        return self.net.get_submodule(self.resolve(layer))

    # --- classification --------------------------------------------------------------------
    def label(self, index: int) -> str:
        return self.labels[index] if self.labels and 0 <= index < len(self.labels) else str(index)

    @analysis
    @torch.no_grad()
    def classify(self, images: torch.Tensor | Sequence[torch.Tensor], top: int = 5) -> list[list[tuple[int, str, float]]]:
        """Top-``top`` ``(index, label, probability)`` for each photo ([3, H, W] in [0, 1], any size)."""
        batch = torch.cat([self.prepare(image) for image in images])
        probs = self(batch).softmax(dim=1)
        values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
        return [
            [(int(i), self.label(int(i)), float(p)) for p, i in zip(row_p, row_i)]
            for row_p, row_i in zip(values, indices)
        ]

    def freeze(self) -> "FeatvisModel":
        """Eval mode and no parameter gradients: analysis never trains the model."""
        self.eval()
        for param in self.parameters():
            param.requires_grad_(False)
        return self


def prepare_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """How ``prepare`` maps a ``height`` x ``width`` photo: resized to (new_h, new_w), then cropped at (top, left)."""
    short = round(size * 256 / 224)
    h, w = height, width
    new_h, new_w = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
    return new_h, new_w, (new_h - size) // 2, (new_w - size) // 2


def prepare_image(image: torch.Tensor, size: int) -> torch.Tensor:
    """``FeatvisModel.prepare`` without a model (on the image's device, e.g. in DataLoader workers): [1, 3, size, size]."""
    if image.dim() == 3:
        image = image.unsqueeze(0)
    new_h, new_w, top, left = prepare_geometry(*image.shape[-2:], size)
    image = F.interpolate(image, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    return image[..., top : top + size, left : left + size].clamp(0, 1)


def _reads_one_channel(net: nn.Module, size: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> bool:
    """Whether ``net`` takes one-channel (grayscale) images: its first convolution (in definition order)
    reads one channel and a one-value mean/std says so, or, with neither given, the net refuses a
    three-channel image (a net that turns RGB into one channel itself takes RGB). The trial runs in
    eval mode without gradients (`eval_mode`: every module's mode put back)."""
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first.in_channels != 1:
        return False
    given = [len(v) for v in (mean, std) if v is not None]
    if given:
        return given[0] == 1
    try:
        with eval_mode(net), torch.no_grad():
            net(torch.zeros(1, 3, int(size), int(size), device=first.weight.device, dtype=first.weight.dtype))
        return False
    except Exception:  # noqa: BLE001 (any failure of the user's code on RGB: it wants one channel)
        return True


def check_normalisation(name: str, grayscale: bool, mean: Sequence[float], std: Sequence[float]) -> None:
    """A one-line error unless ``mean`` and ``std`` have one value per channel the network reads."""
    channels = 1 if grayscale else 3
    if len(mean) != channels or len(std) != channels:
        raise FeatvisError(f"{name} reads {channels} input channel(s) ({'grayscale' if grayscale else 'RGB'}), so mean "
                           f"and std take {channels} value(s) each, got {len(mean)} and {len(std)}")


CALL_MARK = "#"


def split_call(layer: str) -> tuple[str, int | None]:
    """``"_swish#3"`` -> ``("_swish", 3)``; a name without a call -> ``(name, None)``."""
    name, mark, call = layer.rpartition(CALL_MARK)
    if not mark:
        return layer, None
    if not call.isdigit():
        raise FeatvisError(f"'{layer}': a call after '{CALL_MARK}' is a number from 1, e.g. {name}{CALL_MARK}1")
    return name, int(call)


def site_name(path: str, call: int, calls: int | None) -> str:
    """The name of call ``call`` of the module at ``path``, which runs ``calls`` times per forward pass: the
    path itself for a module that runs once (or, uncounted, for its first call), else ``path#call``."""
    return path if call == 1 and calls in (1, None) else f"{path}{CALL_MARK}{call}"


def count_calls(model: FeatvisModel) -> dict[str, int] | None:
    """How many times each module path of ``model.net`` runs in one forward pass of a blank image of the
    model's input size (eval mode, no gradients), measured on a copy of the module tree that shares the
    parameters and buffers but has no hooks: the user's hooks never see the pass and nothing of theirs
    changes. None where the model has lazy layers (the pass would shape them) or fails on a blank image
    (the analysis reports the model's error)."""
    tensors = list(itertools.chain(model.net.parameters(), model.net.buffers()))
    if any(is_lazy(t) for t in tensors):
        return None
    counts: dict[str, int] = {}
    try:
        net = copy.deepcopy(model.net, {id(t): t for t in tensors})  # the modules copied, the tensors shared
        net.eval()
        for path, module in net.named_modules():
            for hooks in ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"):
                getattr(module, hooks, {}).clear()
            if path:
                module.register_forward_hook(lambda *_, path=path: counts.__setitem__(path, counts.get(path, 0) + 1))
        parameter = next((p for p in tensors if p.is_floating_point()), None)
        x = torch.zeros(1, 3, model.input_size, model.input_size, device=model.mean.device,
                        dtype=parameter.dtype if parameter is not None else torch.float32)
        with torch.no_grad():
            net(model.normalize(x))
        return counts
    except Exception:  # noqa: BLE001 - the user's code fails on a blank image: counts unknown
        return None


def as_model(model: nn.Module, **kwargs) -> FeatvisModel:
    """Accept a FeatvisModel or any nn.Module (wrapped with ImageNet normalisation unless told)."""
    if not isinstance(model, nn.Module):
        raise FeatvisError(f"expected a torch.nn.Module, got {type(model).__name__}; pass your model object")
    return FeatvisModel.wrap(model, **kwargs)


def model_fingerprint(model: FeatvisModel) -> str:
    """SHA-256 of the architecture, the input convention and every parameter and buffer."""
    digest = hashlib.sha256()
    digest.update(repr(model.net).encode())
    for tensor in (model.mean, model.std):
        digest.update(tensor.detach().cpu().numpy().tobytes())
    digest.update(f"{model.bgr}|{model.scale}|{model.input_size}".encode() + (b"|gray" if model.grayscale else b""))
    for name, tensor in model.net.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
