"""Expanded weights: the linear map from one layer's channels to a later layer's (Olah et al., Distill 2020).

Between adjacent convolutions the map is the second one's kernel. Across 1x1 reductions,
branches, concatenations, pools, residual additions and several layers, Olah et al. multiply the
weights through with every nonlinearity taken as the identity. featvis does exactly that on the
real graph instead of re-deriving it per architecture:

1. the sub-network is *linearized* while it runs (`linearized`): ReLU-like activations and
   local response normalisation become the identity, max pools become average pools over the
   same windows (padding excluded); convolutions, batch norm (eval), average pools, additions
   and concatenations are linear already;
2. the receptive-field tracer (`featvis.receptive_field.relative_field`) gives the relative
   field of the target on the source map: the kernel's size ``kh x kw`` and which source
   positions a target unit reads; the input image is made just large enough that a central
   target unit reads no padding;
3. an impulse is injected at the source's output and autograd gives, in float64, the exact
   Jacobian of that target unit with respect to the source map, batched over target channels;
   cropped to the unit's field it is the expanded kernel ``[C_target, C_source, kh, kw]``.

Only paths through ``source`` count (a skip connection around it contributes nothing); biases
drop out. Multiplicative gates (squeeze-excitation) are not linear: their map is the Jacobian
at a mid-grey image.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .._util.errors import FeatvisError
from .._util.progress import progress_bar
from ..core.probe import capture
from ..core.sites import site_modules
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model
from ..receptive_field import ReceptiveField, relative_field

#: Activations taken as the identity (Olah et al.'s linearization), and local response norm.
IDENTITIES = frozenset("""
relu relu6 leaky_relu rrelu elu selu celu gelu silu mish hardswish hardtanh softplus threshold local_response_norm
dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout
""".split())
MAX_ELEMENTS = 200_000_000  # numbers in one expanded-weight tensor (1.6 GB in float64)
MAX_INPUT = 2048  # px: the largest image tried to fit a field without padding
CHUNK_BYTES = 256 * 2**20  # gradient memory per batch of target channels

_POOL_ARGS = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _name(func: Any) -> str:
    name = getattr(func, "__name__", "") or ""
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


class linearized(TorchFunctionMode):
    """Within ``with linearized():`` every ReLU-like activation, LRN and dropout returns its input
    and every max pool averages its window (same kernel, stride, padding, ceil mode; padding not
    counted), whether called as a module, a function or a tensor method."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if name in IDENTITIES and args and isinstance(args[0], torch.Tensor):
            return args[0]
        if name in ("max_pool2d", "max_pool2d_with_indices"):
            return _average_pool(dict(zip(_POOL_ARGS, args)) | kwargs)
        if name == "adaptive_max_pool2d":
            if kwargs.get("return_indices") or (len(args) > 2 and args[2]):
                raise FeatvisError("a max pool returns its indices; expanded weights need pools whose output is a map")
            return F.adaptive_avg_pool2d(args[0], args[1] if len(args) > 1 else kwargs["output_size"])
        return func(*args, **kwargs)


def _average_pool(bound: dict) -> torch.Tensor:
    dilation = bound.get("dilation", 1)
    if bound.get("return_indices") or dilation not in (1, (1, 1), [1, 1]):
        raise FeatvisError("a max pool is dilated or returns indices; expanded weights take max pools as average "
                           "pools over the same window, which needs an undilated pool returning a map")
    return F.avg_pool2d(bound["input"], bound["kernel_size"], bound.get("stride") or bound["kernel_size"],
                        bound.get("padding", 0), bool(bound.get("ceil_mode", False)), count_include_pad=False)


def fitted_field(model: FeatvisModel, source: str, target: str) -> tuple[ReceptiveField, int, tuple[int, int]]:
    """The relative field of ``target`` on ``source`` for the smallest tried image where the
    central target unit reads no padding: (field, image side, that unit)."""
    if model.site(source) == model.site(target):
        raise FeatvisError(f"source and target are the same layer '{target}'; choose a source upstream of the target")
    field = relative_field(model, source, target)  # at the model's size: wrong layer pairs fail here
    if field.input_size == (1, 1):
        raise FeatvisError(f"layer '{source}' has no spatial positions (a 1x1 map, after global pooling or a flatten); "
                           "choose a convolutional layer before the global pool")
    if field.unanalysed:
        raise FeatvisError(f"cannot follow the graph from '{source}' to '{target}': no rule for "
                           f"{'; '.join(field.unanalysed)}; describe the layer with featvis.register_rule")
    if field.stride == (0, 0):
        raise FeatvisError(f"layer '{target}' has no spatial positions relative to '{source}' (global pooling between "
                           "them); choose a target before the global pool")
    stride = [math.ceil(model.input_size / n) for n in field.input_size]  # image px per source unit, about
    need = max(s * (k + 2 * t + 2) for s, k, t in zip(stride, field.size, field.stride))
    side = max(min(32, model.input_size), min(need, model.input_size))  # a 28 px model is tried at 28 px
    ran = []
    while side <= MAX_INPUT:
        try:
            trial = field if side == model.input_size else relative_field(model, source, target, side)
        except FeatvisError:
            trial = None  # a size the model cannot run (too small, or a Linear layer fixed to its input size)
        if trial is not None:
            ran.append(side)
            unit = trial.central_unit()
            if trial.visible(unit) == trial.region(unit):
                return trial, side, unit
        side = model.input_size if side < model.input_size else math.ceil(side * 1.5)
    sizes = f"{MAX_INPUT} px images" if ran[-1:] != [model.input_size] else \
        f"{model.input_size} px images, the only size {model.name} runs at"
    raise FeatvisError(f"the field of '{target}' on '{source}' ({field.size[0]}x{field.size[1]}) reaches padding "
                       f"even for {sizes}; choose layers closer together")


@analysis
def expanded_weights(model: nn.Module, source: str, target: str, *, progress: bool = False) -> torch.Tensor:
    """The expanded weights from layer ``source`` to layer ``target``, float64 ``[C_target, C_source, kh, kw]``.

    Entry ``[t, s, a, b]`` is how much target channel ``t`` at a unit changes per unit of source
    channel ``s`` at row ``a``, column ``b`` of that unit's relative receptive field (``kh x kw``),
    with every nonlinearity taken as the identity and max pools as average pools over the same
    window (see the module docstring). For adjacent convolutions it is the target's own kernel. From a
    dictionary's features (``LAYER_features``, `featvis.attach_dictionary`) it is the weights from ``LAYER``
    times each feature's decoder direction; to them, through the features' encoder (the TopK taken as the identity).
    """
    fmodel = as_model(model)
    if source in fmodel.dictionaries:  # a feature adds its decoder direction to the layer: weights from there, times it
        dictionary = fmodel.dictionaries[source]
        from_layer = expanded_weights(fmodel, dictionary.layer, target, progress=progress)
        return torch.einsum("tcab,nc->tnab", from_layer, dictionary.decoder.to(from_layer))
    field, side, (y, x) = fitted_field(fmodel, source, target)
    box = field.region((y, x))
    net = copy.deepcopy(fmodel).to(torch.float64).eval()
    net.requires_grad_(False)
    impulse: list[torch.Tensor] = []

    def inject(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        if impulse:
            return output
        impulse.append(torch.zeros_like(output, requires_grad=True))
        return output + impulse[0]

    image = torch.full((1, 3, side, side), 0.5, dtype=torch.float64, device=fmodel.mean.device)
    site = net.site(source)
    with site_modules(net, [site]) as modules:
        handle = modules[site].register_forward_hook(inject)
        try:
            with torch.enable_grad(), linearized():
                unit = capture(net, image, [target], detach=False)[target][0, :, y, x]
        finally:
            handle.remove()
    source_map = impulse[0]
    channels_out, channels_in = field.output_shape[0], source_map.shape[1]
    count = channels_out * channels_in * box.height * box.width
    if count > MAX_ELEMENTS:
        raise FeatvisError(f"the expanded weights from '{source}' to '{target}' would hold {count:,} numbers "
                           f"({channels_out}x{channels_in}x{box.height}x{box.width}); choose layers closer together")
    chunk = max(1, min(channels_out, CHUNK_BYTES // (8 * source_map.numel())))
    kernels = []
    starts = range(0, channels_out, chunk)
    with progress_bar(len(starts), f"expanded weights {source} -> {target}", "chunks", enabled=progress) as bar:
        for start in starts:
            rows = torch.arange(start, min(start + chunk, channels_out))
            picks = torch.zeros(len(rows), channels_out, dtype=torch.float64, device=unit.device)
            picks[torch.arange(len(rows)), rows] = 1
            grads, = torch.autograd.grad(unit, source_map, picks, retain_graph=True, is_grads_batched=True)
            kernels.append(grads[:, 0, :, box.y0 : box.y1, box.x0 : box.x1].cpu())
            bar.update(1)
    return torch.cat(kernels)

