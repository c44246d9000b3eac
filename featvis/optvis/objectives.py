"""Objectives: what an optimised image should excite, as one score per image of a batch.

An `Objective` maps ``acts`` — ``{layer name: activation [B, ...]}`` plus ``"input"``, the images
themselves ([B, 3, H, W] in [0, 1], before transforms) — to a tensor ``[B]`` of scores that
rendering maximises. Scores compose: ``a + b``, ``a - b``, ``a * b`` and ``2.5 * a`` act image by
image; ``-a`` gives a negative visualisation. ``batch=i`` restricts a term to image ``i`` of the
objective's own batch (0 elsewhere). An objective covers ``span`` images: 1, or more for
`diversity`, `interpolate` and terms with ``batch=i``; `featvis.render` gives every objective its
own consecutive images of one optimisation, so many objectives render at once.

Penalties (`l1`, `l2`, `total_variation`, `blur`) are positive magnitudes: subtract them.
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from .._util.errors import FeatvisError
from ..core.probe import capture
from ..models.labels import label_index
from ..models.wrapper import FeatvisModel

Acts = Mapping[str, torch.Tensor]
Shapes = Mapping[str, tuple[int, ...]]  # layer -> activation shape without the batch dimension
INPUT = "input"


class Objective:
    """A differentiable score per image; see the module docstring.

    ``checks`` are callables given the layer shapes at the rendering scale, raising FeatvisError
    when a channel or position does not exist, so mistakes surface before any optimisation.
    ``channels`` declares, for some of ``layers``, the only channels ``fn`` reads there (a layer
    not in it may be read whole); rendering then computes only the branches of a concatenating
    block that hold them (`featvis.optvis.pruning`). Declare no more than is true.
    """

    def __init__(self, fn: Callable[[Acts], torch.Tensor], name: str, layers: Iterable[str] = (), span: int = 1,
                 checks: Sequence[Callable[[Shapes], None]] = (), channels: Mapping[str, Iterable[int]] | None = None):
        self.fn, self.name, self.span = fn, name, span
        self.layers = tuple(dict.fromkeys(layers))
        self.checks = tuple(checks)
        self.channels = {layer: frozenset(read) for layer, read in (channels or {}).items() if layer in self.layers}

    def reads(self, layer: str) -> frozenset[int] | None:
        """The channels of ``layer`` this objective reads: a declared set, or None for any."""
        return self.channels.get(layer) if layer in self.layers else frozenset()

    def __call__(self, acts: Acts) -> torch.Tensor:
        return self.fn(acts)

    def __repr__(self) -> str:
        return self.name

    def check(self, shapes: Shapes) -> None:
        for check in self.checks:
            check(shapes)

    def _join(self, other: "Objective | float", op: Callable, symbol: str) -> "Objective":
        if not isinstance(other, Objective):
            value = float(other)
            return Objective(lambda acts: op(self(acts), value), f"{_paren(self)} {symbol} {value:g}", self.layers, self.span,
                             self.checks, self.channels)
        return Objective(lambda acts: op(self(acts), other(acts)), f"{_paren(self)} {symbol} {_paren(other)}",
                         self.layers + other.layers, max(self.span, other.span), self.checks + other.checks,
                         _read_by_both(self, other))

    def __add__(self, other: "Objective | float") -> "Objective":
        return self._join(other, torch.add, "+")

    def __sub__(self, other: "Objective | float") -> "Objective":
        return self._join(other, torch.sub, "-")

    def __mul__(self, other: "Objective | float") -> "Objective":
        return self._join(other, torch.mul, "*")

    def __truediv__(self, other: float) -> "Objective":
        return self._join(other, torch.div, "/")

    def __radd__(self, other: float) -> "Objective":
        return self + other

    def __rsub__(self, other: float) -> "Objective":
        return -self + other

    def __neg__(self) -> "Objective":
        return Objective(lambda acts: -self(acts), f"-{_paren(self)}", self.layers, self.span, self.checks, self.channels)

    def __rmul__(self, other: float) -> "Objective":
        value = float(other)
        return Objective(lambda acts: self(acts) * value, f"{value:g}*{_paren(self)}", self.layers, self.span, self.checks,
                         self.channels)


def _read_by_both(a: Objective, b: Objective) -> dict[str, frozenset[int]]:
    """The channels two objectives read together: the union where both declare theirs."""
    reads = {layer: (a.reads(layer), b.reads(layer)) for layer in dict.fromkeys(a.layers + b.layers)}
    return {layer: x | y for layer, (x, y) in reads.items() if x is not None and y is not None}


def _paren(objective: Objective) -> str:
    return f"({objective.name})" if " " in objective.name else objective.name


def _batch_size(acts: Acts) -> int:
    return next(iter(acts.values())).shape[0]


def _term(layer: str, score: Callable[[torch.Tensor], torch.Tensor], name: str, batch: int | None,
          checks: Sequence[Callable[[Shapes], None]] = (), channel: int | None = None) -> Objective:
    """An objective scoring each image by ``score(acts[layer])``, or only image ``batch``;
    ``channel``: the only channel ``score`` reads, if one."""
    channels = {layer: [channel]} if channel is not None else None
    if batch is None:
        return Objective(lambda acts: score(acts[layer]), name, [layer], 1, checks, channels)
    if batch < 0:
        raise FeatvisError(f"batch index {batch} is negative; use 0 for the first image of the objective")

    def fn(acts: Acts) -> torch.Tensor:
        t = acts[layer]
        return F.pad(score(t[batch : batch + 1]), (batch, t.shape[0] - batch - 1))

    return Objective(fn, f"{name}[{batch}]", [layer], batch + 1, checks, channels)


def _check_channel(layer: str, n: int) -> Callable[[Shapes], None]:
    def check(shapes: Shapes) -> None:
        count = shapes[layer][0]
        if not 0 <= n < count:
            raise FeatvisError(f"channel {n} is out of range for {layer}, which has {count} channels; use 0..{count - 1}")
    return check


def _check_position(layer: str, y: int | None, x: int | None) -> Callable[[Shapes], None]:
    def check(shapes: Shapes) -> None:
        shape = shapes[layer]
        if len(shape) != 3:
            raise FeatvisError(f"{layer} has no spatial map (shape {tuple(shape)}); use a channel objective, not a neuron")
        h, w = shape[1:]
        if (y is not None and not 0 <= y < h) or (x is not None and not 0 <= x < w):
            raise FeatvisError(f"position {y},{x} is outside {layer}'s {h}x{w} map at this image size; use 0..{h - 1},0..{w - 1}")
    return check


def _centre(t: torch.Tensor, y: int | None, x: int | None) -> torch.Tensor:
    """Activations [B, C] at (y, x) of a map [B, C, H, W], the centre where not given."""
    return t[:, :, t.shape[2] // 2 if y is None else y, t.shape[3] // 2 if x is None else x]


def channel(layer: str, n: int, batch: int | None = None) -> Objective:
    """Mean activation of channel ``n`` over all positions (a logit for a [B, classes] layer)."""
    return _term(layer, lambda t: t[:, n].reshape(t.shape[0], -1).mean(1), f"{layer}:{n}", batch, [_check_channel(layer, n)], n)


def neuron(layer: str, n: int, y: int | None = None, x: int | None = None, batch: int | None = None) -> Objective:
    """Activation of channel ``n`` at row ``y``, column ``x`` of the map (the centre by default)."""
    where = "" if y is None and x is None else f"@{y},{x}"
    return _term(layer, lambda t: _centre(t, y, x)[:, n], f"{layer}:{n}{where or '@center'}", batch,
                 [_check_channel(layer, n), _check_position(layer, y, x)], n)


def deepdream(layer: str, batch: int | None = None) -> Objective:
    """Mean squared activation of the whole layer (DeepDream)."""
    return _term(layer, lambda t: t.pow(2).reshape(t.shape[0], -1).mean(1), layer, batch)


def _dot_cossim(t: torch.Tensor, vec: torch.Tensor, cossim_pow: float) -> torch.Tensor:
    """Dot products [B, ...] of each position's channel vector with ``vec``, times cosine similarity**pow."""
    dot = torch.einsum("bc...,c->b...", t, vec)
    if cossim_pow == 0:
        return dot
    cos = dot / (t.norm(dim=1) * vec.norm() + 1e-8)
    return dot * cos.clamp_min(1e-1) ** cossim_pow


def direction(layer: str, vector: torch.Tensor | Sequence[float], batch: int | None = None, cossim_pow: float = 0.0) -> Objective:
    """Mean over positions of the dot product with a channel-space ``vector`` (Lucid's ``direction``)."""
    vec = torch.as_tensor(vector, dtype=torch.float32)
    return _term(layer, lambda t: _dot_cossim(t, vec.to(t), cossim_pow).reshape(t.shape[0], -1).mean(1),
                 f"direction({layer})", batch, [_check_length(layer, vec)])


def direction_neuron(layer: str, vector: torch.Tensor | Sequence[float], y: int | None = None, x: int | None = None,
                     batch: int | None = None, cossim_pow: float = 0.0) -> Objective:
    """Dot product with ``vector`` at one position (the centre by default)."""
    vec = torch.as_tensor(vector, dtype=torch.float32)
    return _term(layer, lambda t: _dot_cossim(_centre(t, y, x), vec.to(t), cossim_pow), f"direction_neuron({layer})", batch,
                 [_check_length(layer, vec), _check_position(layer, y, x)])


def _check_length(layer: str, vec: torch.Tensor) -> Callable[[Shapes], None]:
    def check(shapes: Shapes) -> None:
        if vec.shape != (shapes[layer][0],):
            raise FeatvisError(f"direction has shape {tuple(vec.shape)} but {layer} has {shapes[layer][0]} channels; give one value per channel")
    return check


def class_logit(model: FeatvisModel, label: str | int, batch: int | None = None) -> Objective:
    """The logit of a class (a label name such as ``"banana"`` or an index) at the model's last layer."""
    index = label_index(model.labels, label)
    layer = logits_layer(model)
    objective = channel(layer, index, batch)
    objective.name = f"class:{label}" + ("" if batch is None else f"[{batch}]")
    return objective


def logits_layer(model: FeatvisModel) -> str:
    """The module path of the class scores: the network's last child module (``fc`` for inceptionv1)."""
    names = [name for name, child in model.net.named_children() if child is not None]
    if not names:
        raise FeatvisError(f"{model.name} has no child modules; name the logits layer as LAYER:INDEX instead of class:")
    return names[-1]


def diversity(layer: str, images: int = 4) -> Objective:
    """Dissimilarity of the style (normalised Gram matrix) of ``layer`` between the ``images`` images.

    Each image scores minus the sum of its Gram matrix's cosine similarity with every other
    image's, divided by the batch size (Lucid's ``diversity``, negated so it is maximised).
    """
    def fn(acts: Acts) -> torch.Tensor:
        t = acts[layer]
        flat = t.reshape(t.shape[0], t.shape[1], -1)
        grams = F.normalize(torch.bmm(flat, flat.transpose(1, 2)).flatten(1), dim=1)
        similarity = grams @ grams.T
        return -(similarity.sum(1) - similarity.diagonal()) / t.shape[0]

    return Objective(fn, f"diversity({layer})", [layer], images)


def caricature(model: FeatvisModel, layer: str, photo: torch.Tensor, cossim_pow: float = 1.0, batch: int | None = None) -> Objective:
    """Match and amplify the activations ``photo`` causes at ``layer`` (at the model's input size).

    Score: the projection of the image's activations on the photo's, times their cosine
    similarity**``cossim_pow`` (higher powers favour the photo's pattern over sheer magnitude).
    """
    target = capture(model, model.prepare(photo), [layer])[layer][0]

    def score(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(t.shape[0], -1)
        dot = flat @ target.flatten().to(flat) / target.norm()
        cos = dot / (flat.norm(dim=1) + 1e-8)
        return dot * cos.clamp_min(1e-1) ** cossim_pow

    def check(shapes: Shapes) -> None:
        if tuple(shapes[layer]) != tuple(target.shape):
            raise FeatvisError(f"caricature target of {layer} was taken at {model.input_size} px; render at that input scale")

    return _term(layer, score, f"caricature({layer})", batch, [check])


def interpolate(a: Objective, b: Objective, images: int = 5) -> Objective:
    """Image ``i`` of ``images`` maximises ``(1 - w) * a + w * b`` with ``w = i / (images - 1)``."""
    if images < 2:
        raise FeatvisError(f"interpolate needs at least 2 images, got {images}")

    def fn(acts: Acts) -> torch.Tensor:
        w = torch.linspace(0, 1, _batch_size(acts)).to(next(iter(acts.values())))
        return (1 - w) * a(acts) + w * b(acts)

    return Objective(fn, f"interpolate({a.name}, {b.name})", a.layers + b.layers, max(images, a.span, b.span), a.checks + b.checks,
                     _read_by_both(a, b))


def alignment(layer: str, decay_ratio: float = 2.0) -> Objective:
    """Similarity of neighbouring images' activations (up to 4 apart, weight decay_ratio**-distance).

    Minus the mean squared difference of each pair, split between its two images; it keeps an
    interpolation's frames alike (Lucid's ``alignment``).
    """
    def fn(acts: Acts) -> torch.Tensor:
        t = acts[layer]
        scores = t.new_zeros(t.shape[0])
        for d in range(1, min(5, t.shape[0])):
            pair = (t[d:] - t[:-d]).pow(2).reshape(t.shape[0] - d, -1).mean(1) / decay_ratio**d / 2
            scores = scores - F.pad(pair, (0, d)) - F.pad(pair, (d, 0))
        return scores

    return Objective(fn, f"alignment({layer})", [layer], 1)


def l1(layer: str = INPUT, constant: float = 0.5, batch: int | None = None) -> Objective:
    """Mean absolute deviation from ``constant`` (a penalty: subtract it)."""
    return _term(layer, lambda t: (t - constant).abs().flatten(1).mean(1), f"l1({layer})", batch)


def l2(layer: str = INPUT, constant: float = 0.5, batch: int | None = None) -> Objective:
    """Root mean squared deviation from ``constant`` (a penalty: subtract it)."""
    return _term(layer, lambda t: ((t - constant).pow(2).flatten(1).mean(1) + 1e-12).sqrt(), f"l2({layer})", batch)


def total_variation(layer: str = INPUT, batch: int | None = None) -> Objective:
    """Mean absolute difference between vertically and horizontally adjacent pixels (a penalty)."""
    def score(t: torch.Tensor) -> torch.Tensor:
        dy = (t[..., 1:, :] - t[..., :-1, :]).abs().flatten(1).mean(1)
        dx = (t[..., 1:] - t[..., :-1]).abs().flatten(1).mean(1)
        return dy + dx
    return _term(layer, score, f"total_variation({layer})", batch)


def blur(layer: str = INPUT, batch: int | None = None) -> Objective:
    """Half the mean squared distance to a 3x3-blurred, fixed copy (Lucid's blur_input_each_step; a penalty)."""
    def score(t: torch.Tensor) -> torch.Tensor:
        channels = t.shape[1]
        kernel = torch.ones(channels, 1, 3, 3).to(t) / 9
        blurred = F.conv2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels).detach()
        return 0.5 * (t - blurred).pow(2).flatten(1).mean(1)
    return _term(layer, score, f"blur({layer})", batch)


__all__ = [
    "Objective", "channel", "neuron", "deepdream", "direction", "direction_neuron", "class_logit", "logits_layer",
    "diversity", "caricature", "interpolate", "alignment", "l1", "l2", "total_variation", "blur",
]
