"""`render`: activation maximisation, many objectives at once, as in Olah et al., Distill 2017.

Each objective gets its own images of one batch, parameterised (`param`), transformed
(`transforms`) and fed to the frozen model, whose forward pass stops at the deepest layer the
objectives need (`Probe(early_exit=True)`). Adam (lr 0.05) raises the sum of all objectives, so
every image follows only its own objective. The first `REDIRECT_STEPS` steps use the
redirected-ReLU gradient so that channels dead for a noise start still get a picture.

Speed: Adam is featvis's own (`adam`: no torch._dynamo import), freed activations stay in the
process between steps (`featvis._util.heap`), the model runs channels-last, with slow layers replaced
by exact faster stand-ins (`fast_layers`), a concatenating block computes only the branches the
objectives read (`pruning`), conv + ReLU pairs are fused after the redirected steps and, with
``precision="auto"`` on a CPU with AMX or AVX512-BF16, its weights and activations in bfloat16 where
its gradient agrees with float32's on the first batch (`precision`; the image, its transforms, the
objectives and the final measurement stay float32).

Random draws (initial noise, transforms) come from one generator per image seeded by
(seed, objective's name as given, image index): the same settings give the same image whatever
else is in the batch, and the same PNG byte for byte on the same machine. Ctrl-C stops the
optimisation and returns the images reached so far.

Beyond the article: ``param="maco"`` (Fel et al. 2023, `maco`) with its transparency map
(``RenderResult.alpha``), feature accentuation of a photo (``accentuate=``, `accentuation`), and
a plausibility score per image (`plausibility`) beside the ratio to natural photos.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._util.choices import RENDER_BATCH
from .._util.errors import FeatvisError
from .._util.heap import keep_freed_memory
from .._util.progress import Counter, progress_bar
from .._util.reprs import short_repr
from ..core.images import load_image
from ..core.probe import Probe
from ..models.modes import analysis
from ..models.wrapper import FeatvisModel, as_model
from . import transforms as tf
from .accentuation import DEFAULT_DISTANCE, SEED, Accentuation, pull_back
from .adam import Adam
from .fast_layers import fast_layers, fused_conv_relus
from .maco import alpha_map
from .memory import check_render_fits
from .natural import natural_max
from .objectives import INPUT, Acts, Objective, Shapes
from .param_factory import make_param
from .plausibility import plausibility
from .precision import compute_dtype, faithful_dtype, frozen, memory_format
from .pruning import assemble, probed_layers, prune
from .redirected_relu import REDIRECT_STEPS, redirected_relus
from .settings import RenderSettings
from .spec import layer_shapes, parse_spec

DEFAULT_BATCH = RENDER_BATCH
LEARNING_RATE = 0.05


@dataclass
class RenderResult:
    """One rendered image: ``image`` [3, H, W] in [0, 1] (final), ``images`` {step: image} at the
    thresholds, ``activation`` the objective's value on ``image`` without transforms at the model's
    input scale, ``natural_max`` the best value over natural photos and ``ratio`` = activation /
    natural_max (None where undefined). ``steps`` is how many steps ran (fewer after Ctrl-C);
    ``index`` is the image's position within a multi-image objective (diversity, interpolation).
    ``plausibility``: see `featvis.optvis.plausibility`; ``alpha`` [H, W] in [0, 1]: MACO's
    transparency map (parameterisations with one); ``distance``: an accentuated image's relative
    distance to its photo in the accentuation layer; ``precision``: the model's number format
    while optimising ("float32" or "bfloat16", see `featvis.optvis.precision`); ``unmoved``: why the
    image is still exactly its start (one line naming the layer), None when it moved."""

    spec: str
    image: torch.Tensor
    images: dict[int, torch.Tensor]
    activation: float
    natural_max: float | None = None
    ratio: float | None = None
    steps: int = 0
    index: int = 0
    interrupted: bool = False
    plausibility: float | None = None
    alpha: torch.Tensor | None = None
    distance: float | None = None
    precision: str = "float32"
    unmoved: str | None = None

    __repr__ = short_repr  # shapes, not pixel values


#: ``transforms`` left out of a `render` call: the settings' value (None itself still means no transforms).
_FROM_SETTINGS: Any = object()


@dataclass
class _Plan:
    """One render's resolved settings, shared by its optimisations (chunks)."""

    settings: RenderSettings
    scale: int
    transform: tf.Transforms | None
    init: torch.Tensor | None
    keep: list[int]
    dtype: torch.dtype
    verify_bfloat16: bool
    accentuation: Accentuation | None
    penalties: dict[int, Objective]


@analysis
def render(
    model: nn.Module,
    specs: str | Objective | Sequence[str | Objective],
    settings: RenderSettings | None = None,
    *,
    steps: int | None = None,
    size: int | None = None,
    seed: int | None = None,
    param: str | None = None,
    decorrelate: bool | None = None,
    transforms: "str | tf.Transforms | None" = _FROM_SETTINGS,
    valid: str | None = None,
    precision: str | None = None,
    batch: int | None = None,
    init: "torch.Tensor | str | os.PathLike | None" = None,
    thresholds: Sequence[int] | None = None,
    progress: bool = True,
    natural: bool = True,
    accentuate: "torch.Tensor | str | os.PathLike | None" = None,
    accentuate_layer: str | None = None,
    accentuate_distance: float = DEFAULT_DISTANCE,
    strict: bool = True,
    on_step: Callable[[int, int], None] | None = None,
    on_image: Callable[[int, int, torch.Tensor], None] | None = None,
) -> list[RenderResult]:
    """Render every spec (a string, see `parse_spec`, or an Objective); one result per image.

    ``settings``: a `RenderSettings` (steps, size, seed, param, decorrelate, transforms, valid,
    precision; its defaults where not given); a keyword of the same name overrides its field, so
    ``render(model, "mixed4a:97", steps=64)`` works as before. ``size``: side of the optimised image;
    the model sees it resized to max(size, input size). ``param``: "fft", "pixel" or "maco" (phase
    only, with a transparency map); ``decorrelate``: ImageNet colour decorrelation; ``valid``:
    "sigmoid" or "clip" into [0, 1]. ``transforms``: "default" (the article's), "none" (or None) or a
    `Transforms`. ``precision``: the model's number format while optimising, "float32", "bfloat16"
    or "auto" (see `featvis.optvis.precision`); images, objectives and the reported activations are
    float32 always, and each result says the format used.
    ``batch``: images per optimisation (default 16; a multi-image objective is never split).
    ``init``: a photo (tensor or path) to start from instead of noise.
    ``thresholds``: steps at which to keep images (0: the start; the last step always).
    ``accentuate``: a photo to accentuate (feature accentuation): start from it and stay within
    relative distance ``accentuate_distance`` of it in ``accentuate_layer`` (default: each
    objective's own layer) while raising the objective.
    ``natural``: also compute natural_max, ratio and plausibility. ``interrupted`` results come from Ctrl-C.
    ``on_step(done, total)``: called after every optimisation step (``total``: steps of all optimisations).
    ``on_image(step, first, images)``: called at every kept step (``thresholds``) with the images so far
    ([n, C, S, S] on the CPU, the ``first``-th image of the whole render first): a preview while it runs;
    keeping an image never changes the optimisation.
    An image whose objective never moved from its start (no gradient ever reached it) is an error
    naming its layer, not a flat picture; ``strict=False`` hands it back with ``unmoved`` saying so
    instead (galleries and the server keep going past a unit that never fires).
    """
    model = as_model(model)
    settings = (settings or RenderSettings()).replace(
        steps=steps, size=size, seed=seed, param=param, decorrelate=decorrelate, valid=valid, precision=precision)
    if transforms is not _FROM_SETTINGS:
        settings = dataclasses.replace(settings, transforms="none" if transforms is None else transforms)
    items = [specs] if isinstance(specs, (str, Objective)) else list(specs)
    objectives = [parse_spec(model, s) if isinstance(s, str) else s for s in items]
    names = [s if isinstance(s, str) else s.name for s in items]
    if not objectives:
        raise FeatvisError("no specs given; name at least one, e.g. mixed4a:97")
    if batch is not None and batch < 1:
        raise FeatvisError(f"batch must be >= 1, got batch={batch}")
    steps = settings.steps
    keep = sorted(set(thresholds or ()) | {steps})
    if keep[0] < 0 or keep[-1] > steps:
        raise FeatvisError(f"thresholds must lie in 0..{steps} (the number of steps), got {list(thresholds or ())}")
    layers = [layer for o in objectives for layer in o.layers if layer != INPUT]
    dtype = compute_dtype(settings.precision, model)
    chunks = list(_chunks(objectives, names, batch or DEFAULT_BATCH))
    check_render_fits(model, layers, max(sum(o.span for o, _ in chunk) for chunk in chunks), settings.size,
                      max(settings.size, model.input_size), dtype)  # before anything is run at that size
    scale, shapes = _scale(model, layers, settings.size)
    for objective in objectives:
        objective.check(shapes)
    if settings.param == "maco" and (init is not None or accentuate is not None):
        raise FeatvisError("the maco parameterisation cannot start from a photo (its magnitude is fixed); "
                           "use param fft with init or accentuate")
    if init is not None and accentuate is not None:
        raise FeatvisError("give either init (a start photo) or accentuate (a photo to stay close to), not both")
    if accentuate is not None and not accentuate_distance > 0:
        raise FeatvisError(f"accentuate_distance must be > 0, got {accentuate_distance}")
    start = _init_image(init if accentuate is None else accentuate, settings.size)
    accentuation = Accentuation(accentuate_layer, accentuate_distance) if accentuate is not None else None
    if accentuation is not None:
        layer_shapes(model, [accentuation.layer_for(o) for o in objectives], scale)  # unknown layers fail here
    plan = _Plan(settings, scale, tf.resolve(settings.transforms), start, keep, dtype,
                 settings.precision == "auto" and dtype is torch.bfloat16, accentuation,
                 _penalties(model, objectives, accentuation, scale))

    # the natural-photo bar first: whatever it needs (the sample photos) fails before the optimisation
    maxima = [natural_max(model, o, scale, progress=progress) if natural and o.span == 1 else None for o in objectives]
    results: list[RenderResult] = []
    total = steps * len(chunks)
    desc = "render" if len(chunks) == 1 else f"render ({len(chunks)} batches of {steps} steps)"  # never "64 steps" for 16
    with keep_freed_memory(), progress_bar(total, desc, "steps", enabled=progress) as bar:
        counter = _Steps(bar, total, on_step, on_image)
        for chunk in chunks:
            counter.first = len(results)
            results += _optimise(model, chunk, counter, plan)
            if results[-1].interrupted:
                break
    for result, best in zip(results, (m for o, m in zip(objectives, maxima) for _ in range(o.span))):
        if best is not None:
            result.natural_max = best
            result.ratio = result.activation / best if best > 0 else None
    stuck = next((r.unmoved for r in results if r.unmoved), None)
    if strict and stuck:
        raise FeatvisError(stuck)
    if natural:
        for result, value in zip(results, plausibility(model, torch.stack([r.image for r in results]))):
            result.plausibility = value
    return results


class _Steps:
    """Counts optimisation steps into the progress bar and the caller's ``on_step``; hands kept images to
    ``on_image`` (``first``: the index of the running batch's first image in the whole render)."""

    def __init__(self, bar: Counter, total: int, on_step: Callable[[int, int], None] | None,
                 on_image: Callable[[int, int, torch.Tensor], None] | None = None):
        self.bar, self.total, self.on_step, self.on_image, self.done, self.first = bar, total, on_step, on_image, 0, 0

    def kept(self, step: int, images: torch.Tensor) -> None:
        if self.on_image is not None:
            self.on_image(step, self.first, images)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        if self.on_step is not None:
            self.on_step(self.done, self.total)


def _scale(model: FeatvisModel, layers: list[str], size: int) -> tuple[int, Shapes]:
    """The side the model sees the image at, with ``layers``' shapes there: max(size, its input size),
    or its input size where the model accepts no other up to ``layers`` (a Linear layer after the
    convolutions: a 28 px digit CNN)."""
    scale = max(size, model.input_size)
    try:
        return scale, layer_shapes(model, layers, scale)
    except FeatvisError:
        if scale == model.input_size:
            raise
        return model.input_size, layer_shapes(model, layers, model.input_size)  # the image is resized to it


def _penalties(model: FeatvisModel, objectives: list[Objective], accentuation: Accentuation | None,
               scale: int) -> dict[int, Objective]:
    """The accentuation penalty of each objective (by id), in units of its best natural activation."""
    if accentuation is None:
        return {}
    return {id(o): accentuation.penalty(o, abs(natural_max(model, o, scale)) or 1.0) for o in objectives}


def _chunks(objectives: list[Objective], names: list[str], batch: int) -> Iterator[list[tuple[Objective, str]]]:
    """Consecutive objectives grouped into optimisations of at most ``batch`` images (at least one objective each)."""
    chunk: list[tuple[Objective, str]] = []
    for objective, name in zip(objectives, names):
        if chunk and sum(o.span for o, _ in chunk) + objective.span > batch:
            yield chunk
            chunk = []
        chunk.append((objective, name))
    yield chunk


def _init_image(init: "torch.Tensor | str | os.PathLike | None", size: int) -> torch.Tensor | None:
    """The start photo as [1, 3, size, size]: the central square, resized."""
    if init is None:
        return None
    image = load_image(init) if not isinstance(init, torch.Tensor) else init
    if image.dim() != 3 or image.shape[0] != 3:
        raise FeatvisError(f"init image must be [3, H, W] RGB in [0, 1], got shape {tuple(image.shape)}")
    h, w = image.shape[1:]
    side = min(h, w)
    square = image[None, :, (h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    return F.interpolate(square.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _image_seed(seed: int, name: str, index: int) -> int:
    return zlib.crc32(f"{seed}\0{name}\0{index}".encode())


def _batched(chunk: list[tuple[Objective, str]]) -> Callable[[Acts], torch.Tensor]:
    """Scores [B] of a whole batch: each objective scores its own consecutive images.

    The batch is cut with ``torch.split``, whose backward concatenates the pieces' gradients,
    rather than by slicing per objective (each slice's backward would fill a full-batch zero tensor).
    """
    spans = [objective.span for objective, _ in chunk]

    def scores(acts: Acts) -> torch.Tensor:
        pieces = {k: v.split(spans) for k, v in acts.items()}
        return torch.cat([objective({k: p[i] for k, p in pieces.items()}) for i, (objective, _) in enumerate(chunk)])

    return scores


def _optimise(model: FeatvisModel, chunk: list[tuple[Objective, str]], bar: "_Steps", plan: _Plan) -> list[RenderResult]:
    settings, scale, transform, init, keep = plan.settings, plan.scale, plan.transform, plan.init, plan.keep
    steps, size, dtype, accentuation, penalties = settings.steps, settings.size, plan.dtype, plan.accentuation, plan.penalties
    device = model.mean.device
    images_of = [(name, i) for objective, name in chunk for i in range(objective.span)]
    layers_of = {name: objective.layers for objective, name in chunk}
    generators = [torch.Generator().manual_seed(_image_seed(settings.seed, objective.name, i)) for objective, _ in chunk
                  for i in range(objective.span)]
    image_param = make_param(settings.param, generators, size, decorrelate=settings.decorrelate, valid=settings.valid,
                             init=init).to(device)
    thetas = transform.stream(generators, steps, size, scale) if transform else None
    optimizer = Adam(image_param.parameters(), lr=image_param.learning_rate or LEARNING_RATE)
    scores = _batched(chunk)
    penalty = _batched([(penalties[id(objective)], name) for objective, name in chunk]) if penalties else None
    anchors = [accentuation.layer_for(objective) for objective, _ in chunk] if accentuation else []
    layers = list(dict.fromkeys([layer for objective, _ in chunk for layer in objective.layers if layer != INPUT] + anchors))
    photos = init.expand(len(generators), -1, -1, -1).to(device) if accentuation else None
    transparency = torch.zeros(len(generators), size, size, device=device) if image_param.has_alpha else None
    kept: dict[int, torch.Tensor] = {}
    done, interrupted = 0, False

    layout = memory_format(model)
    pruned = prune(model, layers, [objective for objective, _ in chunk] + list(penalties.values()), scale)
    probing = Probe(model, probed_layers(layers, pruned), early_exit=True, detach=False) if layers else contextlib.nullcontext()
    with fast_layers(model), probing as probe:
        def activations(images: torch.Tensor, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
            acts = assemble(probe(x.to(dtype, memory_format=layout)), layers, pruned) if layers else {}
            return {**{k: v.float() for k, v in acts.items()}, INPUT: images}

        def place(images: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
            """The model's view of ``images`` under this step's draw ``theta`` (the same for an image and its photo)."""
            return tf.apply(images, theta, scale, transform.fill) if transform else tf.resize(images, scale)

        def start_gradient(dtype: torch.dtype) -> torch.Tensor:
            """The loss's gradient with respect to the start images, as step 0 computes it in ``dtype`` (the loss's,
            not the objectives': the redirected ReLUs let a dead unit's gradient through only in the direction that raises it)."""
            with frozen(model, dtype), redirected_relus(model):
                images = image_param()
                return torch.autograd.grad(-scores(activations(images, tf.resize(images, scale), dtype)).sum(), images)[0]

        if plan.verify_bfloat16:
            dtype = faithful_dtype(model, layers, start_gradient)
        phase = contextlib.ExitStack()  # redirected ReLUs first, then the fused (plain) conv + ReLU pairs
        try:
            with frozen(model, dtype):
                phase.enter_context(redirected_relus(model))
                start = image_param().detach().cpu()
                if 0 in keep:
                    kept[0] = start
                for step in range(steps):
                    if step == REDIRECT_STEPS:
                        phase.close()
                        phase.enter_context(fused_conv_relus(model))
                    images = image_param()
                    theta = next(thetas).to(device) if transform else None
                    acts = activations(images, place(images, theta), dtype)
                    if penalty is not None:
                        with torch.no_grad():
                            acts |= {SEED + k: v for k, v in activations(photos, place(photos, theta), dtype).items() if k != INPUT}
                        loss = -(scores(acts) - penalty(acts)).sum()
                    else:
                        loss = -scores(acts).sum()
                    if transparency is not None:
                        images.retain_grad()
                    optimizer.zero_grad()
                    loss.backward()
                    if transparency is not None:
                        transparency += images.grad.abs().sum(1)
                    optimizer.step()
                    done = step + 1
                    bar.update(1)
                    if done in keep:
                        kept[done] = image_param().detach().cpu()
                        bar.kept(done, kept[done])
        except KeyboardInterrupt:
            interrupted = True
        finally:
            phase.close()

        with frozen(model), torch.no_grad():
            final = image_param()
            if accentuation is not None:
                final, far = pull_back(lambda t: activations(t, tf.resize(t, scale)), final, init.to(device), anchors,
                                       accentuation.distance)
            values = scores(activations(final, tf.resize(final, scale)))
            finished = done > 0 and not interrupted
            # a unit still exactly where it started (a ReLU unit at 0.0) once the redirected steps are over: its
            # gradient stays zero from then on; measured only where the end is exactly 0 (a shorter render may not
            # have reached the unit yet)
            stuck = finished and done >= REDIRECT_STEPS and bool((values == 0).any())
            at_start = scores(activations(start.to(device), tf.resize(start.to(device), scale))) if stuck else None
    final = final.detach().cpu()
    kept[done] = final
    results = [
        RenderResult(name, final[b], {s: v[b] for s, v in kept.items()}, float(values[b]), steps=done, index=i, interrupted=interrupted)
        for b, (name, i) in enumerate(images_of)
    ]
    for b, result in enumerate(results):
        result.alpha = alpha_map(transparency[b].cpu()) if transparency is not None else None
        result.distance = float(far[b]) if accentuation is not None else None
        result.precision = str(dtype).removeprefix("torch.")
        if finished and (torch.equal(start[b], final[b]) or (at_start is not None and bool(values[b] == at_start[b]))):
            result.unmoved = _unmoved(result, layers_of[result.spec])
    return results


def _unmoved(result: RenderResult, layers: list[str]) -> str:
    """One line for an image whose objective ends exactly where it started (the image did not move, or
    moved without changing it, e.g. a ReLU unit still at 0.0): no gradient reached it through the unit, its
    picture would be flat noise (a unit that never fires, behind an activation the redirected gradient does
    not cover, or an objective that does not depend on the image)."""
    return (f"{result.spec}: the objective never moved from {result.activation:.4g} in {result.steps} steps, no gradient "
            f"reached the image through {', '.join(layers) or 'the model'} (a unit that never fires here); pick another "
            "channel or layer, e.g. the layer before its activation")
