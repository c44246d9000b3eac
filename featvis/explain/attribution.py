"""Spatial attribution at a hidden layer: gradient x activation, the linear approximation of
"The Building Blocks of Interpretability" (Olah et al., Distill 2018).

With ``a`` a layer's activations on a photo and ``g = d logit / d a``, the target logit is
approximated around zero activation by ``g · a``; position ``p`` contributes ``g[:, p] · a[:, p]``
and a neuron group ``j`` with factored activations ``W[p, j] H[j]`` contributes
``Σ_p g[:, p] · W[p, j] H[j]``. Completeness: the positions' contributions add up to the total
``g · a`` exactly, the groups' up to it less the part of ``a`` the factorisation leaves out
(reported as ``residual``). For a model that is linear after the layer, ``g · a`` is exactly
``logit(a) - logit(0)``.

The layer's output is replaced by a leaf tensor through forward hooks (`LayerInput`), so
gradients reach every part of a concat layer and the model can be evaluated on any activation.
"""

from __future__ import annotations

import contextlib

import torch

from .._util.errors import FeatvisError
from ..core.probe import Probe, spatial_layers
from ..core.sites import site_modules
from ..models.wrapper import FeatvisModel


class LayerInput:
    """Run ``model`` on ``x`` with ``layer``'s output replaced by ``value`` [1, C, H, W] (all its parts).

    >>> with LayerInput(model, "mixed4d") as swap:
    ...     logits = swap(x, a)        # the network from mixed4d on, fed with a
    """

    def __init__(self, model: FeatvisModel, layer: str):
        self.model, self.layer = model, layer
        self.paths = model.parts(layer)
        self.value: torch.Tensor | None = None
        self._handles: list = []
        self._sites = contextlib.ExitStack()

    def __enter__(self) -> "LayerInput":
        sizes: dict[str, int] = {}

        def hook(path: str):
            def replace(module, inputs, output):
                if self.value is None:
                    return None
                sizes.setdefault(path, output.shape[1])
                start = sum(sizes[p] for p in self.paths[: self.paths.index(path)])
                return self.value[:, start : start + output.shape[1]].to(output.dtype)
            return replace

        modules = self._sites.enter_context(site_modules(self.model, self.paths))
        for path in self.paths:
            self._handles.append(modules[path].register_forward_hook(hook(path)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._sites.close()

    def __call__(self, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        self.value = value
        try:
            return self.model(x)
        finally:
            self.value = None


def layer_activations(model: FeatvisModel, x: torch.Tensor, layer: str) -> torch.Tensor:
    """``layer``'s activations [C, H, W] on the model input ``x`` [1, 3, S, S]; a FeatvisError
    names the problem when the layer has no spatial map."""
    with Probe(model, [layer], early_exit=True) as probe, torch.no_grad():
        acts = probe(x)[layer]
    if acts.dim() != 4 or acts.shape[-1] * acts.shape[-2] < 2:
        spatial = spatial_layers(model, x)
        hint = f"such as {spatial[-1]}, the last of {model.name}'s" if spatial else "(this model has none)"
        raise FeatvisError(f"layer '{layer}' has no spatial map (output shape {tuple(acts.shape[1:])}); "
                           f"choose a layer with a map {hint}; `featvis layers` lists them")
    return acts[0]


def logit_gradient(model: FeatvisModel, x: torch.Tensor, layer: str, acts: torch.Tensor, target: int) -> tuple[float, torch.Tensor]:
    """``(logit, gradient)``: the target logit and its gradient [C, H, W] with respect to ``layer``'s activations ``acts``."""
    a = acts[None].detach().clone().requires_grad_(True)
    with LayerInput(model, layer) as swap, torch.enable_grad():
        logits = swap(x, a)
        if logits.dim() != 2:
            raise FeatvisError(f"the model's output has shape {tuple(logits.shape)}, not [1, classes]; attribution needs class scores")
        (grad,) = torch.autograd.grad(logits[0, target], a)
    return float(logits[0, target].detach()), grad[0].detach()


def group_flow(model: FeatvisModel, x: torch.Tensor, earlier: str, acts: torch.Tensor, W1: torch.Tensor, H1: torch.Tensor,
               later: str, H2: torch.Tensor) -> torch.Tensor:
    """Attribution [k1, k2] from the earlier layer's groups to the later layer's.

    Later group ``j``'s presence is ``Σ_p a2[:, p] · H2[j]`` (its direction summed over
    positions); earlier group ``i`` contributes gradient x its factored activations,
    ``Σ_p grad[:, p] · W1[p, i] H1[i]``, one backward pass per later group.
    """
    k1, (c, h, w) = W1.shape[1], acts.shape
    groups = torch.einsum("pi,ic->icp", W1.to(acts), H1.to(acts)).reshape(k1, c, h, w)
    a = acts[None].detach().clone().requires_grad_(True)
    with LayerInput(model, earlier) as swap, Probe(model, [later], early_exit=True, detach=False) as probe, torch.enable_grad():
        swap.value = a
        try:
            a2 = probe(x)[later][0]
        finally:
            swap.value = None
        presence = torch.einsum("chw,jc->j", a2, H2.to(a2))
        rows = [torch.autograd.grad(presence[j], a, retain_graph=j + 1 < len(presence))[0][0] for j in range(len(presence))]
    grads = torch.stack(rows)  # [k2, C, H, W]
    return torch.einsum("jchw,ichw->ij", grads.double(), groups.double()).cpu()
