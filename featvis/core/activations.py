"""The pre-activation of a layer: where a negative visualization is meaningful.

After a ReLU a unit cannot go below zero, so optimising ``-mixed4a:97`` only finds what switches the
unit off (its activation ends at -0.0). Lucid's answer is to negate the layer before the activation
(``mixed4a_pre_relu``), as the README recommends. `pre_activation` finds that layer for any model:
a ``<name>_pre_relu`` layer where the model names one (GoogLeNet's aliases and concat layers), else, for
an activation module, the module whose output it reads, found in one forward pass by tensor identity.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.modes import analysis
from ..models.wrapper import CALL_MARK, FeatvisModel, as_model, split_call

#: activation modules whose output is (close to) never negative: negating them is meaningless
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Mish, nn.Softplus, nn.Sigmoid, nn.Hardsigmoid)


@analysis
@torch.no_grad()
def pre_activation(model: nn.Module, layer: str) -> str | None:
    """The layer name whose output ``layer``'s activation reads, or None where ``layer`` is no known
    activation (its own values may be negative) or where that input cannot be read back (an in-place
    activation overwrites it; a function, not a module, produced it)."""
    fmodel = as_model(model)
    if layer in fmodel.concats:
        return None  # a concat layer joins modules' outputs: GoogLeNet's are the pre-activations themselves
    named = [f"{name}_pre_relu" for name in (layer, *fmodel.aliases_of(fmodel.resolve(layer)))]
    found = next((name for name in named if name in fmodel.aliases or name in fmodel.concats), None)
    if found is not None:
        return found
    site = fmodel.site(layer)
    path, call = split_call(site)
    module = fmodel.net.get_submodule(path)
    if not isinstance(module, ACTIVATIONS) or getattr(module, "inplace", False):
        return None
    return _producer(fmodel, path, call or 1)


def _producer(model: FeatvisModel, path: str, call: int) -> str | None:
    """The site whose output is the input of call ``call`` of module ``path``, by tensor identity."""
    outputs: dict[int, str] = {}  # id of an output tensor -> the innermost site that returned it
    kept: list[torch.Tensor] = []  # every tensor stays alive, so no id is reused during the pass
    calls: dict[str, int] = {}
    wanted: list[torch.Tensor] = []

    def before(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:
            if name == path and calls.get(name, 0) + 1 == call and inputs and isinstance(inputs[0], torch.Tensor):
                wanted.append(inputs[0])

        return hook

    def after(name: str):
        def hook(module: nn.Module, inputs: tuple, output) -> None:
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor):
                kept.append(output)
                once = calls[name] == 1 and model.calls(name) in (1, None)  # uncounted: a bare name is the first call
                site = name if once else f"{name}{CALL_MARK}{calls[name]}"
                outputs.setdefault(id(output), site)

        return hook

    handles = []
    try:
        for name, module in model.net.named_modules():
            if name:
                handles.append(module.register_forward_pre_hook(before(name)))
                handles.append(module.register_forward_hook(after(name)))
        model(torch.zeros(1, 3, model.input_size, model.input_size, device=model.mean.device))
    finally:
        for handle in handles:
            handle.remove()
    found = outputs.get(id(wanted[0])) if wanted else None
    return (model.aliases_of(found) or [found])[0] if found is not None else None  # by its alias where it has one
