"""Capturing activations at named layers of any model, with hooks that are always removed.

``early_exit=True`` stops the forward pass as soon as every requested layer has produced its
output, so optimising an objective on ``mixed4a`` never pays for ``mixed5b`` and the classifier.
A module that runs several times in one forward pass is captured at its first call. A concat
layer (``FeatvisModel.concats``, e.g. ``mixed4a_pre_relu``) is captured as the concatenation along
channels of its parts' outputs; early exit waits for every part. ``model_input`` turns a photo into
the model's input and ``spatial_layers`` lists the layers that output maps.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from .._util.errors import FeatvisError
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model, site_name
from .sites import every_module_hooked, site_modules


class _StopForward(Exception):
    """Raised inside a hook to end the forward pass early; never escapes the Probe."""


class Probe:
    """Context manager that records the outputs of ``layers`` (names, aliases or concat layers) of ``model``.

    >>> with Probe(model, ["mixed4a", "conv2d0"], early_exit=True) as probe:
    ...     acts = probe(images)          # {"mixed4a": Tensor, "conv2d0": Tensor}

    With ``detach=False`` the activations stay in the autograd graph (for optimisation).
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], *, early_exit: bool = False, detach: bool = True):
        self.model: FeatvisModel = as_model(model)
        self.layers = list(dict.fromkeys(layers))
        if not self.layers:
            raise FeatvisError("no layers given to probe; name at least one layer")
        self.parts = {layer: self.model.parts(layer) for layer in self.layers}
        self.paths = list(dict.fromkeys(path for parts in self.parts.values() for path in parts))
        self.early_exit = early_exit
        self.detach = detach
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._sites = contextlib.ExitStack()
        self._outputs: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "Probe":
        try:
            modules = self._sites.enter_context(site_modules(self.model, self.paths))
            for path in self.paths:
                self._handles.append(modules[path].register_forward_hook(self._hook(path)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._sites.close()

    def _hook(self, path: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if path in self._outputs:
                return
            if not isinstance(output, torch.Tensor):
                raise FeatvisError(f"layer '{path}' outputs {type(output).__name__}, not a tensor; probe a layer with tensor output")
            self._outputs[path] = output.detach().clone() if self.detach else output
            if self.early_exit and len(self._outputs) == len(self.paths):
                raise _StopForward

        return hook

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the model on ``x`` (RGB in [0, 1]) and return ``{layer name as given: output}``."""
        if not self._handles:
            raise FeatvisError("Probe used outside its `with` block; write `with Probe(...) as probe: probe(x)`")
        self._outputs = {}
        try:
            self.model(x)
        except _StopForward:
            pass
        missing = [layer for layer, parts in self.parts.items() if any(path not in self._outputs for path in parts)]
        if missing:
            raise FeatvisError(f"layer(s) {', '.join(missing)} did not run in the forward pass; probe layers the model uses "
                               "(`featvis layers MODEL` lists them, and each call of a module that runs several times)")
        outputs = {layer: _concat([self._outputs[path] for path in parts]) for layer, parts in self.parts.items()}
        self._outputs = {}
        return outputs


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One part's output as is; several joined along channels (dimension 1)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, 1)


@analysis
def capture(model: nn.Module, x: torch.Tensor, layers: Sequence[str], *, early_exit: bool = True, detach: bool = True) -> dict[str, torch.Tensor]:
    """One-shot capture: ``capture(model, images, ["mixed4a"])["mixed4a"]``, in eval mode (see
    featvis.models.modes); a ``Probe`` runs the model in whatever mode it is in."""
    with Probe(model, layers, early_exit=early_exit, detach=detach) as probe:
        return probe(x)


def model_input(model: FeatvisModel, image: torch.Tensor) -> torch.Tensor:
    """A photo [3, H, W] resized and cropped for the model; a batch [1, 3, H, W] is taken as is."""
    if image.dim() == 4 and image.shape[0] == 1 and image.shape[1] == 3:
        return image.to(model.mean.device, torch.float32)
    if image.dim() == 3 and image.shape[0] == 3:
        return model.prepare(image.float())
    raise FeatvisError(f"expected an RGB image [3, H, W] or batch [1, 3, H, W], got shape {tuple(image.shape)}")


@torch.no_grad()
def spatial_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Sites (module paths; ``path#k`` for each call of a module that runs several times) whose output on
    ``x`` is a map [N, C, H, W] with H*W > 1, in the order they finish."""
    fmodel = as_model(model)
    finished: list[tuple[str, int]] = []  # (path, call) of each spatial output, in the order they finish
    calls: dict[str, int] = {}

    def record(path: str):
        def hook(module, inputs, output) -> None:
            calls[path] = calls.get(path, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[-1] * output.shape[-2] > 1:
                finished.append((path, calls[path]))

        return hook

    with every_module_hooked(fmodel.net, after=record):
        fmodel(x)
    return [site_name(path, call, calls[path]) for path, call in finished]
