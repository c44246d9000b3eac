"""Feature visualisation by activation maximisation (Olah, Mordvintsev & Schubert, Distill 2017).

- `render(model, specs, ...)` -> list of `RenderResult` (image, activation, natural_max, ratio);
  ``precision="auto"`` optimises in bfloat16 on CPUs with AMX or AVX512-BF16 (`compute_dtype`), else float32
- `parse_spec(model, "mixed4a:97")` -> `Objective` (grammar in `featvis.optvis.spec`)
- objectives: `channel`, `neuron`, `deepdream`, `direction`, `direction_neuron`, `class_logit`,
  `diversity`, `caricature`, `interpolate`, `alignment`, penalties `l1`, `l2`,
  `total_variation`, `blur`; combine with + - * and scalars
- `natural_max(model, spec)`: the best score of natural photos, the bar to clear
- deeper networks: ``param="maco"`` (`MacoImage`, Fel et al. 2023: phase only, magnitude of
  natural photos, `natural_spectrum`) with its transparency map, ``accentuate=PHOTO`` (feature
  accentuation), `plausibility` (deep features vs natural photos') on every result
- building blocks: `Transforms` (robustness), `make_param` (fft / pixel / maco, colour decorrelation),
  `redirected_relus` (the gradient that gives dead channels a picture)
"""

from .maco import MacoImage, natural_spectrum
from .natural import natural_max, photo_crops
from .objectives import (
    Objective,
    alignment,
    blur,
    caricature,
    channel,
    class_logit,
    deepdream,
    direction,
    direction_neuron,
    diversity,
    interpolate,
    l1,
    l2,
    neuron,
    total_variation,
)
from .param import FourierImage, PixelImage
from .param_factory import make_param
from .plausibility import plausibility
from .precision import PRECISIONS, compute_dtype
from .redirected_relu import REDIRECT_STEPS, RedirectedReLU, redirected_relus
from .rendering import RenderResult, render
from .spec import layer_shapes, parse_spec
from .transforms import Transforms

__all__ = [
    "Objective", "PRECISIONS", "RenderResult", "Transforms", "FourierImage", "PixelImage", "RedirectedReLU", "REDIRECT_STEPS",
    "alignment", "blur", "caricature", "channel", "class_logit", "compute_dtype", "deepdream", "direction", "direction_neuron",
    "diversity", "interpolate", "l1", "l2", "layer_shapes", "make_param", "natural_max", "neuron", "parse_spec",
    "photo_crops", "redirected_relus", "render", "total_variation",
    "MacoImage", "natural_spectrum", "plausibility",
]
