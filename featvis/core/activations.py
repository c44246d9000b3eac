"""The pre-activation of a layer: where a negative visualization is meaningful.

After a ReLU a unit cannot go below zero, so optimising ``-mixed4a:97`` only finds what switches the
unit off (its activation ends at -0.0). Lucid's answer is to negate the layer before the activation
(``mixed4a_pre_relu``), as the README recommends. `pre_activation` finds that layer for any model:
a ``<name>_pre_relu`` layer where the model names one (GoogLeNet's aliases and concat layers), else, for
an activation module, the module whose output it reads, found in one forward pass by tensor identity.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model, site_name, split_call
from .sites import every_module_hooked

#: activation modules whose output is (close to) never negative: negating them is meaningless
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.Softplus, nn.Sigmoid, nn.Hardsigmoid)


@analysis
@torch.no_grad()
def pre_activation(model: nn.Module, layer: str) -> str | None:
    """The layer name whose output ``layer``'s activation reads, or None where ``layer`` is no known
    activation (its own values may be negative) or where that input cannot be read back (an in-place
    activation overwrites it; a function, not a module, produced it)."""
    return pre_activations(model, [layer])[layer]


@analysis
@torch.no_grad()
def pre_activations(model: nn.Module, layers: Sequence[str]) -> dict[str, str | None]:
    """`pre_activation` of each of ``layers``, with one forward pass for all (run it before the model is
    shared with another thread: the pass hooks every module)."""
    fmodel = as_model(model)
    found: dict[str, str | None] = {}
    wanted: dict[str, list[str]] = {}  # the site of an activation module -> the layer names asking for it
    for layer in layers:
        if layer in fmodel.concats:
            found[layer] = None  # a concat layer joins modules' outputs: GoogLeNet's are the pre-activations themselves
            continue
        named = [f"{name}_pre_relu" for name in (layer, *fmodel.aliases_of(fmodel.resolve(layer)))]
        found[layer] = next((name for name in named if name in fmodel.aliases or name in fmodel.concats), None)
        if found[layer] is None:
            site = fmodel.site(layer)
            module = fmodel.net.get_submodule(split_call(site)[0])
            if isinstance(module, ACTIVATIONS) and not getattr(module, "inplace", False):
                wanted.setdefault(site, []).append(layer)
    if wanted:
        producers = _producers(fmodel, list(wanted))
        for site, names in wanted.items():
            for name in names:
                found[name] = producers.get(site)
    return found


def _producers(model: FeatvisModel, sites: list[str]) -> dict[str, str]:
    """For each site, the site whose output is its input, by tensor identity, in one forward pass."""
    outputs: dict[int, str] = {}  # id of an output tensor -> the innermost site that returned it
    kept: list[torch.Tensor] = []  # every tensor stays alive, so no id is reused during the pass
    calls: dict[str, int] = {}
    inputs: dict[str, torch.Tensor] = {}

    def before(name: str):  # a call is counted when it starts; its end (after) names the same call
        def hook(module: nn.Module, args: tuple) -> None:
            calls[name] = calls.get(name, 0) + 1
            if args and isinstance(args[0], torch.Tensor):
                inputs.setdefault(site_name(name, calls[name], model.calls(name)), args[0])

        return hook

    def after(name: str):
        def hook(module: nn.Module, args: tuple, output) -> None:
            if isinstance(output, torch.Tensor):
                kept.append(output)
                outputs.setdefault(id(output), site_name(name, calls[name], model.calls(name)))

        return hook

    with every_module_hooked(model.net, after=after, before=before):
        model(torch.zeros(1, 3, model.input_size, model.input_size, device=model.mean.device))
    found = {site: outputs.get(id(inputs[site])) for site in sites if site in inputs}
    return {site: (model.aliases_of(p) or [p])[0] for site, p in found.items() if p is not None}  # by alias where it has one
