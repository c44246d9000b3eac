"""Feature visualisation by activation maximisation (Olah, Mordvintsev & Schubert, Distill 2017).

- `render(model, specs, settings=RenderSettings(...), ...)` -> list of `RenderResult` (image, activation,
  natural_max, ratio); `RenderSettings` (`featvis.optvis.settings`) holds what a picture depends on, once for
  every door (render, gallery, serve, explain, atlas, circuit);
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

Names are imported from their modules on first use (``_EXPORTS``), so the command line can read
`featvis.optvis.settings` without importing torch.
"""

from __future__ import annotations

from .._util.lazy import lazy_exports


#: Public name -> the submodule that defines it (a module's own name: the module itself).
_EXPORTS: dict[str, str] = {
    "MacoImage": "maco", "natural_spectrum": "maco",
    "natural_max": "natural", "photo_crops": "natural",
    "objectives": "objectives",
    **{name: "objectives" for name in (
        "Objective", "alignment", "blur", "caricature", "channel", "class_logit", "deepdream", "direction",
        "direction_neuron", "diversity", "interpolate", "l1", "l2", "neuron", "total_variation")},
    "FourierImage": "param", "PixelImage": "param",
    "make_param": "param_factory",
    "plausibility": "plausibility",
    "PRECISIONS": "precision", "compute_dtype": "precision",
    "REDIRECT_STEPS": "redirected_relu", "RedirectedReLU": "redirected_relu", "redirected_relus": "redirected_relu",
    "RenderResult": "rendering", "render": "rendering",
    "RenderSettings": "settings", "picture_key": "settings",
    "layer_shapes": "spec", "parse_spec": "spec",
    "Transforms": "transforms",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = [
    "Objective", "PRECISIONS", "RenderResult", "RenderSettings", "Transforms", "FourierImage", "PixelImage", "RedirectedReLU",
    "REDIRECT_STEPS", "alignment", "blur", "caricature", "channel", "class_logit", "compute_dtype", "deepdream", "direction",
    "direction_neuron", "diversity", "interpolate", "l1", "l2", "layer_shapes", "make_param", "natural_max", "neuron",
    "parse_spec", "photo_crops", "picture_key", "redirected_relus", "render", "total_variation",
    "MacoImage", "natural_spectrum", "plausibility",
]
