"""`RenderSettings`: everything a rendered picture depends on, defined once for every door.

``featvis render``, ``gallery``, ``serve``, ``explain``, ``atlas`` and ``circuit`` (and
`featvis.render` in Python) all take one of these: its defaults, its validation, its cache key
(`picture_key`) and the names of its choices live here and nowhere else. The CLI adds its
options from this class (`featvis.cli.common.add_render_args`), so a new setting is one field
here plus one line of help there.

The precision stays a *policy* ("auto", "float32", "bfloat16") until `featvis.render` runs: only
there does the faithfulness guard decide what "auto" becomes for a model and its layers, and the
result reports the format actually used (`RenderResult.precision`).

This module imports no torch, so the command line can build its parser from it.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._util.choices import PRECISIONS
from .._util.errors import FeatvisError

if TYPE_CHECKING:
    from ..models.wrapper import FeatvisModel

#: Image parameterisations (`featvis.optvis.param_factory` builds them by these names).
PARAMS = ("fft", "pixel", "maco")
#: Named transform sets (`featvis.optvis.transforms.resolve`); a `Transforms` object is accepted too.
TRANSFORMS = ("default", "none")
#: How an image is kept in [0, 1].
VALID = ("sigmoid", "clip")
#: The article's step count: full quality.
FULL_STEPS = 512


#: the most optimisation steps one picture takes (every door: render, gallery, serve, explain, atlas, circuit);
#: 100,000 is 200 times the full-quality 512
MAX_STEPS = 100_000


@dataclass(frozen=True)
class RenderSettings:
    """What a picture depends on besides its objective and model (see the module docstring).

    ``steps``: optimisation steps; ``size``: image side in px (the model sees max(size, its input
    size)); ``seed``: the random draws (per image, with the objective's name); ``param``: one of
    `PARAMS`; ``decorrelate``: ImageNet colour decorrelation; ``transforms``: one of `TRANSFORMS` or a
    `Transforms`; ``valid``: one of `VALID`; ``precision``: one of ``PRECISIONS`` (a policy: see
    `featvis.optvis.precision`).
    """

    steps: int = FULL_STEPS
    size: int = 128
    seed: int = 0
    param: str = "fft"
    decorrelate: bool = True
    transforms: Any = "default"
    valid: str = "sigmoid"
    precision: str = "auto"

    def __post_init__(self) -> None:
        for name in ("steps", "size", "seed"):  # numpy integers as plain ints (JSON keys, comparisons)
            if _whole(getattr(self, name)):
                object.__setattr__(self, name, int(getattr(self, name)))
        if not _whole(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            raise FeatvisError(f"steps must be a whole number from 1 to {MAX_STEPS:,}, got steps={self.steps!r}")
        if not _whole(self.size) or self.size < 8:
            raise FeatvisError(f"image size must be a whole number, size >= 8 px, got size={self.size!r}")
        if not _whole(self.seed):
            raise FeatvisError(f"seed must be a whole number, got {self.seed!r}")
        for name, what, choices in (("param", "parameterisation", PARAMS), ("valid", "valid", VALID),
                                    ("precision", "precision", PRECISIONS)):
            value = getattr(self, name)
            if value not in choices:
                raise FeatvisError(f"unknown {what} '{value}'; use one of {', '.join(choices)}")
        if isinstance(self.transforms, str) and self.transforms not in TRANSFORMS:
            raise FeatvisError(f"unknown transforms '{self.transforms}'; use default, none or a featvis.optvis.Transforms(...)")

    def replace(self, **changes: Any) -> "RenderSettings":
        """A copy with ``changes``; a change given as None keeps this object's value."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


#: The doors whose pictures differ from `RenderSettings`' defaults, each default defined here once:
#: explain's icons are small, an atlas cell is a quick picture among hundreds.
EXPLAIN_ICONS = RenderSettings(size=80)
ATLAS_CELLS = RenderSettings(steps=256, size=64)


#: Key entries left out while they hold their default, so galleries made before they existed keep their names.
_QUIET = ("param", "decorrelate", "transforms", "valid")


def picture_key(settings: RenderSettings, model: "FeatvisModel", fingerprint: str) -> dict[str, Any]:
    """What a cached picture of ``model`` (``fingerprint``: `model_fingerprint`) made with ``settings`` is
    keyed by (the gallery's and serve's settings, before layer, channel, kind and spec are added).

    ``precision`` is what the policy asks of this model on this machine (`compute_dtype`), and
    ``guard`` is present where "auto" asks for bfloat16: then the start-gradient check decides, so such a
    picture is never taken for one made without the check, nor for one of a float32 machine (whose key
    says float32). The format a picture was actually made in is recorded beside it, not in the key.
    """
    from .precision import AGREEMENT, compute_dtype  # torch: only when a picture is keyed

    if not isinstance(settings.transforms, str):
        raise FeatvisError("cached pictures need named transforms (default or none), not a Transforms object")
    dtype = str(compute_dtype(settings.precision, model)).removeprefix("torch.")
    key: dict[str, Any] = {"model": fingerprint, "steps": settings.steps, "size": settings.size, "seed": settings.seed,
                           "precision": dtype}
    if settings.precision == "auto" and dtype == "bfloat16":
        key["guard"] = AGREEMENT
    defaults = RenderSettings()
    key |= {name: getattr(settings, name) for name in _QUIET if getattr(settings, name) != getattr(defaults, name)}
    return key
