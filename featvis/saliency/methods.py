"""Saliency maps through captum: which input pixels drove a class score.

Every method runs on the RGB [0, 1] input through the ``FeatvisModel`` wrapper, so maps of
``inceptionv1`` (BGR 0-255 inside) and of a user CNN live in the same pixel space. Methods:

=================  ===========================================================================
``saliency``       vanilla gradient of the class logit (Simonyan et al. 2014)
``ixg``            input x gradient
``ig``             integrated gradients from a black baseline (Sundararajan et al. 2017)
``smoothgrad``     gradients averaged over noisy copies, noise relative to the input's range
``guided``         guided backpropagation (Springenberg et al. 2015)
``deconv``         deconvolution (Zeiler & Fergus 2014)
``gradcam``        Grad-CAM at any layer with spatial output (Selvaraju et al. 2017)
``guided-gradcam`` guided backprop times the Grad-CAM map
``occlusion``      drop in the logit when a grey square covers each region
=================  ===========================================================================

captum's guided backprop and deconvolution only change the backward pass of ``nn.ReLU``
modules; a functional ``F.relu`` (torchvision's GoogLeNet, DenseNet, most hand-written CNNs)
silently keeps its plain gradient. ``guided_model`` therefore works on a copy in which every
ReLU call site is its own non-inplace ``nn.ReLU`` module (functional calls rewritten with
torch.fx), and checks that the copy still computes the same outputs.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from matplotlib.figure import Figure, SubFigure
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from .._util.choices import LAYERED, METHODS, SIGNED
from .._util.errors import FeatvisError
from .._util.reprs import short_repr
from ..core.figures import TITLE_SIZE, add_colorbar, new_figure, show_image, show_map
from ..core.probe import model_input, spatial_layers
from ..core.sites import site_modules
from ..inspect.feature_maps import to_input_space
from ..models.labels import label_index
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model


@dataclass
class SaliencyResult:
    """One saliency map: ``attribution`` [C, H, W] over ``image`` [3, H, W] (the model's input).

    C is 3 for per-pixel methods, 1 for the regional ones (``REGIONAL``: Grad-CAM and occlusion,
    whose values do not differ by colour channel).

    ``map`` [H, W] is the channel sum of the attribution (of its magnitude for unsigned
    methods); ``target``/``label``/``prob`` name the explained class and its probability.
    """

    method: str
    image: torch.Tensor
    attribution: torch.Tensor
    target: int
    label: str
    prob: float
    layer: str | None = None
    signed: bool = False
    map: torch.Tensor = field(init=False)

    __repr__ = short_repr  # shapes, not pixel values

    def __post_init__(self) -> None:
        self.map = reduce_map(self.attribution, absolute=not self.signed)


def reduce_map(attribution: torch.Tensor, absolute: bool) -> torch.Tensor:
    """[C, H, W] attribution -> [H, W] map: sum over channels of the values (or their magnitudes)."""
    return (attribution.abs() if absolute else attribution).sum(dim=0)


def check_method(method: str) -> str:
    """``method`` if it is one of ``METHODS``, else a FeatvisError listing them."""
    if method not in METHODS:
        raise FeatvisError(f"unknown saliency method '{method}'; use one of {', '.join(METHODS)}")
    return method


def resolve_target(model: FeatvisModel, x: torch.Tensor, target: int | str | None = None) -> tuple[int, str, float]:
    """``(index, label, probability)`` of the class to explain: ``target`` (index or label) or the top-1."""
    with torch.no_grad():
        logits = model(x)
    if logits.dim() != 2 or logits.shape[0] != 1:
        raise FeatvisError(f"the model's output has shape {tuple(logits.shape)}, not [1, classes]; saliency needs class scores")
    probs = logits.softmax(dim=1)[0]
    index = int(probs.argmax()) if target is None else label_index(model.labels, target)
    if index >= probs.numel():
        raise FeatvisError(f"class index {index} is out of range; the model has classes 0..{probs.numel() - 1}")
    return index, model.label(index), float(probs[index])


def default_gradcam_layer(model: FeatvisModel, x: torch.Tensor) -> str:
    """The last layer (in execution order) whose output is a spatial map larger than 1x1."""
    layers = spatial_layers(model, x)
    if not layers:
        raise FeatvisError(f"{model.name} has no layer with spatial output; Grad-CAM needs a convolutional layer")
    return layers[-1]


def _gradcam_layer(model: FeatvisModel, x: torch.Tensor, layer: str | None) -> str:
    if layer is None:
        return default_gradcam_layer(model, x)
    if model.site(layer) not in spatial_layers(model, x):
        raise FeatvisError(
            f"layer '{layer}' has no spatial output (needs [N, C, H, W] with H*W > 1) for Grad-CAM; "
            f"choose a convolutional layer such as {default_gradcam_layer(model, x)}"
        )
    return layer


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    target: int,
    *,
    layer: str | None = None,
    steps: int = 50,
    internal_batch_size: int | None = 16,
    samples: int = 25,
    noise: float = 0.15,
    window: int | None = None,
    stride: int | None = None,
    baseline: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    """Attribution [C, H, W] of class ``target`` for the model input ``x`` [1, 3, H, W].

    C is 3 for per-pixel methods and 1 for the ``REGIONAL`` ones (Grad-CAM, occlusion). ``steps``: integrated
    gradients; ``samples``/``noise`` (a fraction of the input's value range) and ``seed``:
    SmoothGrad; ``window``/``stride`` (default size/7 and half the window): occlusion;
    ``baseline``: the grey level of the occluding patch and the integrated-gradients baseline
    (0 = black); ``internal_batch_size``: inputs per pass for IG, SmoothGrad and occlusion.
    Grad-CAM uses ``layer`` (default: the last layer with a spatial map).
    """
    fmodel = as_model(model)
    check_method(method)
    x = x.detach().clone()
    if method in LAYERED:
        layer = _gradcam_layer(fmodel, x, layer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
        warnings.filterwarnings("ignore", message=".*required_grads has been set automatically.*")
        result = _METHOD_FUNCTIONS[method](
            fmodel, x, target, layer=layer, steps=steps, internal_batch_size=internal_batch_size, samples=samples,
            noise=noise, window=window, stride=stride, baseline=baseline, seed=seed,
        )
    return result.detach()[0]


def _gradient(model, x, target, **_) -> torch.Tensor:
    return Saliency(model).attribute(x, target=target, abs=False)


def _input_x_gradient(model, x, target, **_) -> torch.Tensor:
    return InputXGradient(model).attribute(x, target=target)


#: Most integrated-gradients steps: captum's Gauss-Legendre nodes solve an n x n eigenproblem (74.5 GiB at
#: n = 100,000); the IG paper's 20 to 300 steps are far below.
MAX_IG_STEPS = 4096


def _integrated_gradients(model, x, target, *, steps, internal_batch_size, baseline, **_) -> torch.Tensor:
    if not 1 <= steps <= MAX_IG_STEPS:
        raise FeatvisError(f"integrated gradients takes 1 to {MAX_IG_STEPS} steps, got {steps} (20 to 300 are usual)")
    return IntegratedGradients(model).attribute(
        x, baselines=torch.full_like(x, baseline), target=target, n_steps=steps, internal_batch_size=internal_batch_size,
    )


def _smoothgrad(model, x, target, *, samples, noise, internal_batch_size, seed, **_) -> torch.Tensor:
    if samples < 1 or noise < 0:
        raise FeatvisError(f"SmoothGrad needs samples >= 1 and noise >= 0, got {samples} and {noise}")
    stdev = noise * float(x.max() - x.min())
    with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        torch.manual_seed(seed)
        return NoiseTunnel(Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=internal_batch_size, stdevs=stdev,
            target=target, abs=False,
        )


def _guided(model, x, target, **_) -> torch.Tensor:
    return GuidedBackprop(guided_model(model)).attribute(x, target=target)


def _deconv(model, x, target, **_) -> torch.Tensor:
    return Deconvolution(guided_model(model)).attribute(x, target=target)


def _gradcam(model, x, target, *, layer, **_) -> torch.Tensor:
    site = model.site(layer)
    with site_modules(model, [site]) as modules:  # one call of a shared module: captum sees that call alone
        cam = LayerGradCam(model, modules[site]).attribute(x, target=target, relu_attributions=True)
    return to_input_space(model, layer, cam[0, 0].detach(), tuple(x.shape[-2:])).unsqueeze(0).unsqueeze(0)


def _guided_gradcam(model, x, target, *, layer, **_) -> torch.Tensor:
    return _guided(model, x, target) * _gradcam(model, x, target, layer=layer)


def _occlusion(model, x, target, *, window, stride, baseline, internal_batch_size, **_) -> torch.Tensor:
    size = min(x.shape[-2:])
    window = window or max(1, size // 7)
    stride = stride or max(1, window // 2)
    if window > size or stride < 1:
        raise FeatvisError(f"occlusion window {window} and stride {stride} do not fit a {size}px input; use 1 <= stride, window <= {size}")
    attribution = Occlusion(model).attribute(
        x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=baseline, target=target,
        perturbations_per_eval=internal_batch_size or 1,
    )
    return attribution[:, :1]  # every channel holds the same value


_METHOD_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "saliency": _gradient,
    "ixg": _input_x_gradient,
    "ig": _integrated_gradients,
    "smoothgrad": _smoothgrad,
    "guided": _guided,
    "deconv": _deconv,
    "gradcam": _gradcam,
    "guided-gradcam": _guided_gradcam,
    "occlusion": _occlusion,
}


@analysis
def saliency(
    model: nn.Module,
    image: torch.Tensor,
    method: str = "saliency",
    *,
    target: int | str | None = None,
    layer: str | None = None,
    **options,
) -> SaliencyResult:
    """Explain ``model``'s decision on ``image`` with ``method`` (one of ``METHODS``).

    ``image`` is a photo [3, H, W] in [0, 1] (resized and cropped for the model) or a model
    input [1, 3, S, S]. ``target`` is a class index or label name (top-1 when None; unknown
    names list the closest labels). ``options`` go to ``attribute``.
    """
    fmodel = as_model(model)
    check_method(method)
    x = model_input(fmodel, image)
    index, label, prob = resolve_target(fmodel, x, target)
    if method in LAYERED:
        layer = _gradcam_layer(fmodel, x, layer)
    attribution = attribute(fmodel, x, method, index, layer=layer, **options)
    return SaliencyResult(method, x[0].detach(), attribution, index, label, prob,
                          layer=layer if method in LAYERED else None, signed=method in SIGNED)


# --- figures ---------------------------------------------------------------------------------

def describe(result: SaliencyResult) -> str:
    """A one-line title: method, class, probability and (for Grad-CAM) the layer."""
    where = f" at {result.layer}" if result.layer else ""
    return f"{METHODS[result.method]}{where} for '{result.label}' ({result.target}), p = {result.prob:.2f}"


def draw_saliency(fig: Figure | SubFigure, result: SaliencyResult, overlay: str | None = None,
                  clip: float | None = 99.5) -> None:
    """Photo and map side by side on ``fig``; ``overlay`` defaults to signed for signed methods, else blend."""
    kind = overlay or ("signed" if result.signed else "blend")
    photo_ax, map_ax = fig.subplots(1, 2)
    show_image(photo_ax, result.image, "input")
    mappable = show_map(map_ax, result.map, kind, image=result.image, clip=clip,
                        title=f"{kind} map, clipped at {clip}th percentile" if clip is not None else f"{kind} map")
    add_colorbar(fig, mappable, map_ax, "attribution" + (" (signed)" if kind == "signed" else " magnitude"))


def saliency_figure(result: SaliencyResult, overlay: str | None = None, clip: float | None = 99.5) -> Figure:
    """A figure of one saliency map: the input and the map (``heat``, ``blend`` or ``signed``)."""
    fig = new_figure(8.0, 4.0)
    draw_saliency(fig, result, overlay, clip)
    fig.suptitle(describe(result), fontsize=TITLE_SIZE)
    return fig


# --- a model copy on which captum's guided methods really apply ------------------------------

_RELU_FUNCTIONS = frozenset({F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_})


class _ReluAudit(TorchFunctionMode):
    """Watches one forward pass for ReLUs that captum's hooks would miss or mix up.

    ``functional``: paths of modules whose own forward calls a functional relu; ``callers``:
    for each ``nn.ReLU`` path, the module that called it, once per call.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.frames: list[tuple[str, bool]] = []
        self.functional: set[str] = set()
        self.callers: dict[str, list[str]] = {}
        self._handles = []
        for path, module in net.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._enter(path, isinstance(module, nn.ReLU))))
            self._handles.append(module.register_forward_hook(self._leave))

    def _enter(self, path: str, is_relu: bool):
        def hook(module, inputs) -> None:
            if is_relu:
                self.callers.setdefault(path, []).append(self.frames[-1][0] if self.frames else "")
            self.frames.append((path, is_relu))

        return hook

    def _leave(self, module, inputs, output) -> None:
        self.frames.pop()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELU_FUNCTIONS and self.frames and not self.frames[-1][1]:
            self.functional.add(self.frames[-1][0])
        return func(*args, **(kwargs or {}))

    def run(self, net: nn.Module, x: torch.Tensor) -> tuple[set[str], torch.Tensor]:
        """``(paths to rewrite, output)``: functional relu callers and callers of a reused nn.ReLU."""
        try:
            with torch.no_grad(), self:
                output = net(x)
        finally:
            for handle in self._handles:
                handle.remove()
        flagged = set(self.functional)
        for callers in self.callers.values():
            if len(callers) > 1:
                flagged.update(callers)
        return flagged, output


def _unshare_relus(net: nn.Module) -> None:
    """Make every ReLU non-inplace and give every registration of a shared ReLU its own instance."""
    seen: set[int] = set()
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                if id(child) in seen:
                    child = nn.ReLU()
                    setattr(parent, name, child)
                seen.add(id(child))
                child.inplace = False


class _ShallowTracer(fx.Tracer):
    """Traces one module's own forward; every submodule call stays a single call_module node."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return True


def _fresh_name(module: nn.Module, base: str) -> str:
    base = base.replace(".", "_")
    name, count = base, 1
    while hasattr(module, name):
        count += 1
        name = f"{base}_{count}"
    return name


def _rewrite_relus(module: nn.Module, path: str) -> nn.Module:
    """``module`` with each relu call site in its forward turned into its own nn.ReLU (via torch.fx)."""
    try:
        graph = _ShallowTracer().trace(module)
    except Exception as exc:  # torch.fx raises many types for untraceable Python
        raise FeatvisError(
            f"guided methods need an nn.ReLU per ReLU call, but {path or 'the model'} ({type(module).__name__}) calls "
            f"ReLUs in a way torch.fx cannot rewrite ({type(exc).__name__}); use a separate nn.ReLU module for each call"
        ) from None
    called: set[str] = set()
    for node in list(graph.nodes):
        is_function = node.op == "call_function" and node.target in _RELU_FUNCTIONS
        is_method = node.op == "call_method" and node.target in ("relu", "relu_")
        is_module = node.op == "call_module" and isinstance(module.get_submodule(node.target), nn.ReLU)
        if is_module and node.target not in called:
            called.add(node.target)
            continue
        if not (is_function or is_method or is_module):
            continue
        name = _fresh_name(module, node.target if is_module else "relu")
        module.add_module(name, nn.ReLU())
        with graph.inserting_after(node):
            replacement = graph.call_module(name, (node.args[0] if node.args else node.kwargs["input"],))
        node.replace_all_uses_with(replacement)
        graph.erase_node(node)
    rewritten = fx.GraphModule(module, graph, class_name=type(module).__name__)
    for name, child in module.named_children():  # keep children the traced path did not call
        if not hasattr(rewritten, name):
            rewritten.add_module(name, child)
    return rewritten.train(module.training)


@analysis
def guided_model(model: nn.Module) -> FeatvisModel:
    """A copy of ``model`` on which captum's guided backprop and deconvolution really apply.

    In the copy every ReLU is a non-inplace ``nn.ReLU`` used at exactly one call site:
    functional relus and second calls of a shared module are rewritten with torch.fx, one
    module at a time so layer names stay valid. The copy must reproduce the model's output
    on a test input, or a FeatvisError says which module could not be rewritten. The copy is
    marked ``guided_ready`` and returned as is when passed again.
    """
    fmodel = as_model(model)
    if getattr(fmodel, "guided_ready", False):
        return fmodel
    prepared = copy.deepcopy(fmodel)
    net = prepared.net
    size = fmodel.input_size
    x = prepared.normalize(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(fmodel.mean.device))
    flagged, expected = _ReluAudit(net).run(net, x.clone())  # the copy is still the original here
    _unshare_relus(net)
    for path in sorted(flagged, key=lambda p: -p.count(".") - bool(p)):  # deepest first, the root last
        rewritten = _rewrite_relus(net.get_submodule(path), path)
        if path:
            net.set_submodule(path, rewritten)
        else:
            prepared.net = net = rewritten
    left, output = _ReluAudit(net).run(net, x.clone())
    if left or not torch.allclose(output, expected, rtol=1e-4, atol=1e-5):
        where = ", ".join(sorted(p or "the model" for p in left)) or "its output changed"
        raise FeatvisError(
            f"cannot prepare {fmodel.name} for guided methods ({where}); use a separate nn.ReLU module for each ReLU call"
        )
    prepared.guided_ready = True
    return prepared.freeze()

