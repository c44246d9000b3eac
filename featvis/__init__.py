"""featvis: see what convolutional networks see.

Public API (everything a notebook needs):

- Models: ``load_model(spec)`` -> ``FeatvisModel`` (``inceptionv1``, ``googlenet``,
  ``squeezenet1_1``, ``torchvision:NAME``, ``pkg.mod:factory``, ``file.py:factory``) and
  ``as_model(nn.Module)`` for any CNN. Models take RGB images in [0, 1].
- Activations: ``Probe(model, layers, early_exit=...)`` and ``capture(model, x, layers)``.
- Images: ``load_image``, ``save_image``, ``sample_photos``; labels: ``imagenet_labels``.
- Ground truth: ``reference`` (conv/pool from the definition, hand-written gradients) and
  ``check_gradients(fn_or_module, *inputs)`` -> ``GradientReport``.
- Filters, feature maps, saliency: ``filter_grid``/``filter_images``, ``feature_map_grid``/
  ``feature_map_overlay``, ``saliency(model, image, method)`` (captum), with sanity checks
  ``cascading_randomization`` and ``deletion_insertion``; ``save_figure`` (PNG/SVG/PDF).
- Receptive fields: ``receptive_field(model, layer)``/``receptive_fields(model)`` -> ``ReceptiveField``
  (exact for any graph; ``register_rule`` for your own layers), ``effective_receptive_field`` (Luo et al.).
- Feature visualization: ``render(model, specs, RenderSettings(steps=..., size=...), ...)`` -> list of
  ``RenderResult`` (the settings' fields also as keywords: ``render(model, specs, steps=64)``); specs like
  ``"mixed4a:97"`` (``parse_spec``) or ``objectives`` combined with + - *; ``natural_max``. ``RenderSettings``
  is the one settings object of every door (render, gallery, serve, explain, atlas, circuit).
  ``precision="auto"`` runs the model in bfloat16 while optimising on CPUs with AMX or AVX512-BF16
  (1.45x to 2x faster) where its start gradient agrees with float32's ($FEATVIS_CPU_BF16=1|0 forces the
  CPU's answer), float32 elsewhere; every result says the format used; reported activations are float32.
- Circuits (Olah et al. 2020): ``expanded_weights(model, source, target)``, ``top_connections(model, unit, source, k)``
  and ``weight_similarity(model, layer)`` (neuron families by their weights).
- Dataset examples: ``dataset_examples(model, images, layers, out, k=9)`` -> ``ExamplesResult`` (each channel's
  top images over a collection of any size, streamed, resumable, shardable; ``merge_examples(out)`` joins shards);
  ``activation_atlas(model, images, layer, "atlas.png")`` (Carter et al. 2019; needs ``featvis[atlas]``).
- Deeper networks: ``render(..., param="maco")`` (MACO, transparency in ``RenderResult.alpha``),
  ``render(..., accentuate=photo)`` (feature accentuation), ``plausibility(model, images)``;
  models ``inceptionv1_lucid`` (Lucid's InceptionV1, needs ``inception5h.pth``) and ``efficientnet_lite2``.
- Errors: ``FeatvisError`` — every user-fixable problem, with a one-line message.
- Modules and functions of one name: ``featvis.saliency`` and ``featvis.receptive_field`` are the
  modules (``featvis.saliency.saliency_figure``), and calling them calls their main function
  (``featvis.saliency(model, photo, "gradcam")``, ``featvis.receptive_field(model, "mixed4a")``).
- Figures: ``saliency_figure(result)``, ``effective_field_figure(erf)``, ``sanity_figure({method: steps})``
  return matplotlib ``Figure`` objects (save with ``save_figure``).
- Attribution shapes: ``SaliencyResult.attribution`` is [3, H, W] for per-pixel methods and
  [1, H, W] for the regional ones (``gradcam``, ``occlusion``: ``featvis.saliency.REGIONAL``);
  ``SaliencyResult.map`` is always [H, W].
- Photos from NumPy/PIL: ``as_image(array)`` turns an HWC uint8 photo (what scikit-image and PIL
  give; also uint16, float, grayscale, RGBA) into the [3, H, W] float tensor in [0, 1] the API takes.
- Results print short: reprs of results show tensor shapes, not their values.
- Limits: ``check_device`` (refuses devices this machine lacks), ``max_pixels`` (the image size limit, $FEATVIS_MAX_PIXELS).
- Building blocks (Olah et al. 2018): ``explain(model, photo, "mixed4d", target=..., groups=6)`` -> ``Explanation``
  (semantic dictionary, activation grid at exact RF centres, NMF groups, gradient x activation), ``explanation_page``, ``nmf``;
  ``promoted_classes(model, layer, channel, photos=None)``: the classes a unit raises most (its summed gradient, by
  forward mode; without photos through the linearized network); ``describe(model, units, images=None)`` -> ``Description``
  (the classes a unit promotes and the classes of its top photos, in the model's own words).
- Features, not only neurons: ``train_dictionary(model, images, layer, features=N, k=K, samples=S)`` -> ``Dictionary``
  (a TopK sparse autoencoder, Gao et al. 2024: ``decoder`` [N, C] unit directions, ``encode``, ``save``; metrics in
  ``info``), ``load_dictionary(DIR)``, and ``attach_dictionary(model, DIR)``: the model with the layer
  ``LAYER_features``, usable wherever a layer is (render, examples, circuits, describe, gallery, serve).

``import featvis`` is light: each name above is imported from its module on first use
(``_EXPORTS``: name -> module), so the command line starts without torch.
"""

from __future__ import annotations


from ._util.lazy import lazy_exports
from ._util.settings import resolve_settings

__version__ = "0.1.0"
resolve_settings()  # relative FEATVIS_WEIGHTS_DIR / FEATVIS_CACHE_DIR: against the start directory, for children too

#: Public name -> the submodule that defines it (a module's own name: the module itself).
#: Append new exports here and to ``__all__``.
_EXPORTS: dict[str, str] = {
    "FeatvisError": "_util.errors",
    "feature_map_grid": "inspect.feature_maps",
    "feature_map_overlay": "inspect.feature_maps",
    "save_figure": "core.figures",
    "filter_grid": "inspect.filters",
    "filter_images": "inspect.filters",
    "GradientReport": "reference.gradcheck",
    "check_gradients": "reference.gradcheck",
    "as_image": "core.images",
    "load_image": "core.images",
    "max_pixels": "core.images",
    "sample_photos": "core.images",
    "save_image": "core.images",
    "imagenet_labels": "models.labels",
    "FeatvisModel": "models.wrapper",
    "as_model": "models.wrapper",
    "load_model": "models",
    "optvis": "optvis",
    "Objective": "optvis",
    "RenderResult": "optvis",
    "RenderSettings": "optvis",
    "natural_max": "optvis",
    "objectives": "optvis",
    "parse_spec": "optvis",
    "render": "optvis",
    "Probe": "core.probe",
    "capture": "core.probe",
    "check_device": "_util.devices",
    "effective_field_figure": "receptive_field.effective",
    "effective_receptive_field": "receptive_field.effective",
    "ReceptiveField": "receptive_field",
    "receptive_field": "receptive_field",
    "receptive_fields": "receptive_field",
    "register_rule": "receptive_field",
    "reference": "reference",
    "SaliencyResult": "saliency",
    "guided_model": "saliency",
    "saliency": "saliency",
    "saliency_figure": "saliency",
    "cascading_randomization": "saliency.sanity",
    "deletion_insertion": "saliency.sanity",
    "sanity_figure": "saliency.sanity",
    "plausibility": "optvis",
    "expanded_weights": "circuits",
    "top_connections": "circuits",
    "weight_similarity": "circuits",
    "Explanation": "explain",
    "explain": "explain",
    "explanation_page": "explain",
    "nmf": "explain",
    "promoted_classes": "explain",
    "ExamplesResult": "examples",
    "dataset_examples": "examples",
    "merge_examples": "examples",
    "Atlas": "examples.atlas",
    "activation_atlas": "examples.atlas",
    "Description": "explain.describe",
    "describe": "explain.describe",
    "Dictionary": "dictionary",
    "attach_dictionary": "dictionary",
    "load_dictionary": "dictionary",
    "train_dictionary": "dictionary",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = [
    "FeatvisError",
    "FeatvisModel",
    "GradientReport",
    "Objective",
    "Probe",
    "ReceptiveField",
    "RenderResult",
    "RenderSettings",
    "SaliencyResult",
    "as_model",
    "capture",
    "cascading_randomization",
    "check_gradients",
    "deletion_insertion",
    "dataset_examples",
    "ExamplesResult",
    "merge_examples",
    "activation_atlas",
    "Atlas",
    "effective_receptive_field",
    "feature_map_grid",
    "feature_map_overlay",
    "filter_grid",
    "filter_images",
    "guided_model",
    "imagenet_labels",
    "load_image",
    "load_model",
    "natural_max",
    "objectives",
    "optvis",
    "parse_spec",
    "plausibility",
    "receptive_field",
    "receptive_fields",
    "reference",
    "register_rule",
    "render",
    "saliency",
    "sample_photos",
    "save_figure",
    "save_image",
    "as_image",
    "effective_field_figure",
    "saliency_figure",
    "sanity_figure",
    "check_device",
    "max_pixels",
    "plausibility",
    "expanded_weights",
    "top_connections",
    "weight_similarity",
    "Explanation",
    "explain",
    "explanation_page",
    "nmf",
    "promoted_classes",
    "dataset_examples",
    "ExamplesResult",
    "merge_examples",
    "activation_atlas",
    "Atlas",
    "Description",
    "describe",
    "Dictionary",
    "attach_dictionary",
    "load_dictionary",
    "train_dictionary",
]
