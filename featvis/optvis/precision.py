"""The model's number format while rendering: float32, or bfloat16 where it is fast and faithful.

``precision="auto"`` asks for bfloat16 only on CPUs whose bfloat16 matrix products are several
times faster (AMX, AVX512-BF16) and only for models whose every operation has a bfloat16
kernel (`compute_dtype`). Then, because a faster picture must never be a worse one, the render
checks bfloat16 against float32 on its first batch (`faithful_dtype`): the gradient of its
objectives with respect to the start images, computed both ways, must point the same way
(cosine >= `AGREEMENT` for every image), else the whole render, and later ones of the same
model and layers, run in float32. The precision used is reported on every `RenderResult`.

``FEATVIS_CPU_BF16=1`` (or ``0``) overrides the CPU's answer to "are bfloat16 products fast here"
(`cpu_bfloat16`), so that either branch of "auto" can be taken, and tested, on any machine; it
changes what "auto" asks for, never which kernels exist.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Callable, Iterator

import torch

from .._util.choices import PRECISIONS
from .._util.errors import FeatvisError
from ..models.modes import eval_mode
from ..models.wrapper import FeatvisModel
from .fast_layers import fast_layers

#: Least cosine between an image's bfloat16 and float32 input gradients at the start for bfloat16 to be kept.
#: Calibrated by 48-step renders of one image, bfloat16 against float32 (ratio to natural photos, bf16 / f32),
#: on a noise start (cosine -> ratio): GoogLeNet mixed3a:15 0.86 -> 1.00, mixed4a:97 0.77 -> 0.95,
#: mixed5b:3 0.73 -> 0.77, mixed4d:5 0.63 -> 0.99; SqueezeNet 1.1 fire3 expand1x1:2 0.71 -> 0.94, fire9
#: expand3x3:5 0.40 -> 0.67; EfficientNet-Lite2 _blocks.15._swish:4 0.16 -> 1.16 (another picture). Below 0.8
#: a picture may be a quarter worse, so those render in float32; the cosine is a coarse guard, not a predictor.
AGREEMENT = 0.8

#: Environment setting that forces `cpu_bfloat16`'s answer: "1" (as on AMX / AVX512-BF16) or "0" (as on AVX2).
CPU_BF16_ENV = "FEATVIS_CPU_BF16"
_CPU_CHECKS = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")


def cpu_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 several times faster than float32 (AMX tiles or
    AVX512-BF16), or what ``$FEATVIS_CPU_BF16`` says ("1" or "0") where it is set."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise FeatvisError(f"{CPU_BF16_ENV}={forced!r} is not understood; set it to 1 (use bfloat16 where it is "
                           "faithful, as on CPUs with AMX or AVX512-BF16) or 0 (float32), or unset it to ask the CPU")
    return any(getattr(torch.cpu, check, lambda: False)() for check in _CPU_CHECKS)

_CHECKED: "weakref.WeakKeyDictionary[FeatvisModel, dict[frozenset[str], torch.dtype]]" = weakref.WeakKeyDictionary()


def faithful_dtype(model: FeatvisModel, layers: list[str], input_gradient: Callable[[torch.dtype], torch.Tensor]) -> torch.dtype:
    """bfloat16 if ``input_gradient(dtype)`` ([B, ...], one row per image) agrees between bfloat16 and
    float32 for every image (see the module docstring), else float32; decided once per model and layers."""
    known = _CHECKED.setdefault(model, {})
    key = frozenset(layers)
    if key not in known:
        known[key] = torch.bfloat16 if bool((agreement(input_gradient(torch.float32), input_gradient(torch.bfloat16))
                                             >= AGREEMENT).all()) else torch.float32
    return known[key]


def agreement(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Cosine [B] between each image's two gradients; 1 where both are zero (nothing to disagree on)."""
    a, b = reference.flatten(1).double(), other.flatten(1).double()
    both_zero = (a.abs().amax(1) == 0) & (b.abs().amax(1) == 0)
    return torch.where(both_zero, 1.0, torch.cosine_similarity(a, b, dim=1))


def compute_dtype(precision: str, model: FeatvisModel) -> torch.dtype:
    """The model's number format while optimising. "auto" is bfloat16 on a CPU with AMX tiles or
    AVX512-BF16 instructions, whose bfloat16 matrix products are several times faster than float32's
    (4.9x on a Xeon with AMX; 4.2x on a 2-core AMD EPYC with AVX512-BF16, where a render is 1.45x
    faster with activations within 3%; `cpu_bfloat16`), and float32 everywhere else or where the model has an
    operation without a bfloat16 kernel (tried once per model); "bfloat16" on such a model is an error."""
    if precision not in PRECISIONS:
        raise FeatvisError(f"unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}")
    fast = model.mean.device.type == "cpu" and cpu_bfloat16()
    if precision == "float32" or (precision == "auto" and not fast):
        return torch.float32
    problem = _bfloat16_problem(model)
    if problem is None:
        return torch.bfloat16
    if precision == "auto":
        return torch.float32
    raise FeatvisError(f"{model.name} cannot run in bfloat16 here ({problem}); use precision float32 (--precision float32)")


def _probe_image(model: FeatvisModel) -> torch.Tensor:
    """A random [1, 3, S, S] image from a private generator: a check never moves the user's random state."""
    noise = torch.rand(1, 3, model.input_size, model.input_size, generator=torch.Generator().manual_seed(0))
    return noise.to(model.mean.device)


_FORMATS: "weakref.WeakKeyDictionary[FeatvisModel, torch.memory_format]" = weakref.WeakKeyDictionary()


def memory_format(model: FeatvisModel) -> torch.memory_format:
    """The activations' layout while optimising: channels-last (oneDNN's fast path) where the model's
    own code accepts it, else the plain contiguous layout. A model that flattens with ``x.view(N, -1)``
    (every MNIST tutorial) fails on channels-last activations, and a speed trick must never change what
    the user's code sees: such a model takes the plain path. Tried once per model, by one forward pass."""
    if model not in _FORMATS:
        x = _probe_image(model)
        try:
            with frozen(model, torch.float32, torch.channels_last), torch.no_grad():
                model(x.contiguous(memory_format=torch.channels_last))
            _FORMATS[model] = torch.channels_last
        except Exception:  # noqa: BLE001 (the user's code may raise anything; the plain path shows it if it fails there too)
            _FORMATS[model] = torch.contiguous_format
    return _FORMATS[model]


_BFLOAT16_PROBLEMS: "weakref.WeakKeyDictionary[FeatvisModel, str | None]" = weakref.WeakKeyDictionary()


def _bfloat16_problem(model: FeatvisModel) -> str | None:
    """Why ``model`` cannot run forward and backward in bfloat16 (the first line of the error), or
    None; found by one pass on a random input, once per model."""
    if model not in _BFLOAT16_PROBLEMS:
        x = _probe_image(model).requires_grad_()
        try:
            with frozen(model, torch.bfloat16), fast_layers(model):
                out = model(x.to(torch.bfloat16, memory_format=memory_format(model)))
                if isinstance(out, torch.Tensor):
                    out.float().sum().backward()
            _BFLOAT16_PROBLEMS[model] = None
        except (RuntimeError, NotImplementedError) as exc:
            _BFLOAT16_PROBLEMS[model] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return _BFLOAT16_PROBLEMS[model]


@contextlib.contextmanager
def frozen(model: FeatvisModel, dtype: torch.dtype = torch.float32, layout: torch.memory_format | None = None) -> Iterator[None]:
    """Eval mode, no parameter gradients, floating parameters and buffers in ``dtype`` and conv
    weights in ``layout`` (default `memory_format`: channels-last where the model accepts it, what
    oneDNN wants for channels-last inputs, instead of reordering the weights at every call) for the
    duration; the previous state is restored exactly."""
    layout = layout or memory_format(model)
    saved = [(p, p.requires_grad, p.data) for p in model.parameters()]
    buffers = [(b, b.data) for b in model.buffers() if b.is_floating_point()]
    try:
        for p, _, data in saved:
            p.requires_grad_(False)
            p.data = data.to(dtype, memory_format=layout if data.dim() == 4 else torch.preserve_format)
        for b, data in buffers:
            b.data = data.to(dtype)
        with eval_mode(model):
            yield
    finally:
        for p, flag, data in saved:
            p.data = data
            p.requires_grad_(flag)
        for b, data in buffers:
            b.data = data
