"""Capturing activations at named layers of any model, with hooks that are always removed.

``early_exit=True`` stops the forward pass as soon as every requested layer has produced its
output, so optimising an objective on ``mixed4a`` never pays for ``mixed5b`` and the classifier.
A module that runs several times in one forward pass is captured at its first call. A concat
layer (``FeatvisModel.concats``, e.g. ``mixed4a_pre_relu``) is captured as the concatenation along
channels of its parts' outputs; early exit waits for every part.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .errors import FeatvisError
from .model import FeatvisModel, as_model


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
        self._outputs: dict[str, torch.Tensor] = {}

    def __enter__(self) -> "Probe":
        try:
            for path in self.paths:
                self._handles.append(self.model.net.get_submodule(path).register_forward_hook(self._hook(path)))
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
            raise FeatvisError(f"layer(s) {', '.join(missing)} did not run in the forward pass; probe layers the model uses")
        outputs = {layer: _concat([self._outputs[path] for path in parts]) for layer, parts in self.parts.items()}
        self._outputs = {}
        return outputs


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One part's output as is; several joined along channels (dimension 1)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, 1)


def capture(model: nn.Module, x: torch.Tensor, layers: Sequence[str], *, early_exit: bool = True, detach: bool = True) -> dict[str, torch.Tensor]:
    """One-shot capture: ``capture(model, images, ["mixed4a"])["mixed4a"]``."""
    with Probe(model, layers, early_exit=early_exit, detach=detach) as probe:
        return probe(x)
