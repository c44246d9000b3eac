"""A dictionary as a layer of the model: ``attach_dictionary(model, DIR)`` adds ``LAYER_features``.

The attached model runs a copy of the user's module tree (the copy shares every parameter and buffer;
the user's model is not changed) with one more child module, the dictionary's `FeatureLayer`, placed
after the top-level block that holds the layer. A forward hook on the layer (on its call ``#k`` for a
module that runs several times) feeds it the layer's output. Every probe, render, examples pass, gallery
and page then sees ``LAYER_features`` like any layer, by its module path.

The features are a side branch: the network downstream reads the layer as before, so the model's
outputs and gradients are the user's. Only where a hook replaces the features' output (an impulse for
circuits, `featvis.explain.attribution.LayerInput` for promoted classes) does the layer change, by the
decoder applied to the change of features: the network downstream then sees what the changed features
mean, exactly as if the layer's activations were written in the dictionary.
"""

from __future__ import annotations

import copy
import itertools
import os
import warnings

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .._util.errors import FeatvisError
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model, model_fingerprint, split_call
from .sae import Dictionary, FeatureLayer, load_dictionary

PRE_RELU = "_pre_relu"


def module_key(layer: str) -> str:
    """The child-module name of a features layer: its layer name with ``.`` and ``#`` (not allowed or meaningful
    in a module name) as ``_``."""
    return layer.replace(".", "_").replace("#", "_")


@analysis
def attach_dictionary(model: nn.Module, dictionary: Dictionary | str | os.PathLike) -> FeatvisModel:
    """``model`` with the layer ``LAYER_features`` of ``dictionary`` (a `Dictionary`, or a folder written by
    `Dictionary.save`), and ``LAYER_features_pre_relu``, the features' pre-activations (where negative
    pictures are meaningful). A new `FeatvisModel`, in eval mode (as every analysis runs a model);
    ``model`` itself is not changed."""
    fmodel = as_model(model)
    dictionary = dictionary if isinstance(dictionary, Dictionary) else load_dictionary(dictionary)
    name = dictionary.name
    if name in fmodel.dictionaries:
        raise FeatvisError(f"a dictionary of {dictionary.layer} is attached already; attach one per layer")
    site = fmodel.site(dictionary.layer)  # an unknown or concat layer is refused here
    fingerprint = base_fingerprint(fmodel)
    _check_fits(fmodel, dictionary, site, fingerprint)
    tensors = list(itertools.chain(fmodel.net.parameters(), fmodel.net.buffers()))
    try:
        net = copy.deepcopy(fmodel.net, {id(t): t for t in tensors})  # the modules copied, the tensors shared
    except Exception as exc:  # noqa: BLE001 - a module that cannot be copied
        raise FeatvisError(f"cannot attach a dictionary to {fmodel.name}: its modules cannot be copied ({exc})") from None
    path, call = split_call(site)
    layer = AttachedFeatures(dictionary, call).to(fmodel.mean.device).eval()
    key = module_key(name)
    if key in dict(net.named_children()):
        raise FeatvisError(f"{fmodel.name} has a module named {key} already; cannot attach the dictionary's layer there")
    _insert_after(net, key, layer, path.split(".")[0])
    target = net.get_submodule(path)
    layer.hook = target.register_forward_hook(layer.feed)
    net.register_forward_pre_hook(layer.reset)
    aliases = dict(fmodel.aliases)
    if key != name:
        aliases[name] = key
    aliases[name + PRE_RELU] = f"{key}.encoder"
    attached = FeatvisModel(net, name=fmodel.name, input_size=fmodel.input_size, mean=fmodel.mean.flatten().tolist(),
                            std=fmodel.std.flatten().tolist(), bgr=fmodel.bgr, scale=fmodel.scale, labels=fmodel.labels,
                            aliases=aliases, concats=fmodel.concats, preprocess=fmodel.preprocess,
                            grayscale=fmodel.grayscale).to(fmodel.mean.device)
    attached.dictionaries = {**fmodel.dictionaries, name: dictionary}
    attached.eval()  # copied while the analysis held every module in eval mode: the wrapper too
    attached.base_fingerprint = fingerprint
    return attached


def base_fingerprint(model: FeatvisModel) -> str:
    """`model_fingerprint` of the user's model, without the dictionaries attached to it (what a dictionary is
    trained on and checked against)."""
    return getattr(model, "base_fingerprint", None) or model_fingerprint(model)


@torch.no_grad()
def layer_shape(model: FeatvisModel, layer: str) -> tuple[int, ...]:
    """``layer``'s output shape, without the batch, on a blank image of the model's input size."""
    from ..core.probe import capture

    blank = torch.zeros(1, 3, model.input_size, model.input_size, device=model.mean.device)
    return tuple(capture(model, blank, [layer])[layer].shape[1:])


def _check_fits(model: FeatvisModel, dictionary: Dictionary, site: str, fingerprint: str) -> None:
    shape = layer_shape(model, dictionary.layer)
    if len(shape) != 3 or shape[0] != dictionary.channels:
        raise FeatvisError(f"the dictionary is for {dictionary.channels} channels of {dictionary.layer}, but {site} of "
                           f"{model.name} outputs {shape}; give the model it was trained on")
    trained_on = dictionary.info.get("fingerprint")
    if trained_on and trained_on != fingerprint:
        warnings.warn(f"the dictionary of {dictionary.layer} was trained on another {dictionary.info.get('model', 'model')} "
                      f"(other weights or input size) than this {model.name}; its features may mean little here",
                      stacklevel=3)


def _insert_after(net: nn.Module, key: str, layer: nn.Module, after: str) -> None:
    """Add ``layer`` as child ``key`` of ``net`` right after child ``after`` (listings keep the network's order)."""
    children = list(net._modules.items())
    at = next((i + 1 for i, (name, _) in enumerate(children) if name == after), len(children))
    net._modules.clear()
    for name, module in children[:at] + [(key, layer)] + children[at:]:
        net._modules[name] = module


class AttachedFeatures(FeatureLayer):
    """A `FeatureLayer` fed by forward hooks on ``net`` (`feed` on the layer's module, `reset` on ``net``): its
    hooks are its own bound methods, so a deep copy of the model (float64 circuits, serve) copies them with it.

    `feed` must see the layer's output as every other hook leaves it (an impulse injected there, a value a
    probe swaps in, the receptive-field tracer's marks), so at the start of every forward pass `reset` moves
    it behind the hooks registered since."""

    def __init__(self, dictionary: Dictionary, call: int | None):
        super().__init__(dictionary)
        self.call, self.calls = call, 0
        self.hook: RemovableHandle | None = None

    def reset(self, module: nn.Module, inputs) -> None:
        self.calls = 0
        hooks = self.hook.hooks_dict_ref() if self.hook is not None else None
        if hooks is not None and self.hook.id in hooks:
            hooks.move_to_end(self.hook.id)

    def feed(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        """Run on the layer's output (of call ``#k``); where a hook changed the features, pass the change on."""
        self.calls += 1
        if self.call is not None and self.calls != self.call:
            return None
        try:
            features = self(output)
            raw = self.last
        finally:
            self.last = None
        if features is raw:
            return None
        return output + self.decode(features - raw, bias=False).to(output.dtype)
