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
- Feature visualization: ``render(model, specs, ...)`` -> list of ``RenderResult``; specs like
  ``"mixed4a:97"`` (``parse_spec``) or ``objectives`` combined with + - *; ``natural_max``.
  ``precision="auto"`` runs the model in bfloat16 while optimising on CPUs with AMX (about 2x
  faster), float32 elsewhere; reported activations are float32 measurements.
- Circuits (Olah et al. 2020): ``expanded_weights(model, source, target)``, ``top_connections(model, unit, source, k)``
  and ``weight_similarity(model, layer)`` (neuron families by their weights).
- Dataset examples: ``dataset_examples(model, images, layers, out, k=9)`` -> ``ExamplesResult`` (each channel's
  top images over a collection of any size, streamed, resumable, shardable; ``merge_examples(out)`` joins shards);
  ``activation_atlas(model, images, layer, "atlas.png")`` (Carter et al. 2019; needs ``featvis[atlas]``).
- Deeper networks: ``render(..., param="maco")`` (MACO, transparency in ``RenderResult.alpha``),
  ``render(..., accentuate=photo)`` (feature accentuation), ``plausibility(model, images)``;
  models ``inceptionv1_lucid`` (Lucid's InceptionV1, needs ``inception5h.pth``) and ``efficientnet_lite2``.
- Errors: ``FeatvisError`` — every user-fixable problem, with a one-line message.
- Building blocks (Olah et al. 2018): ``explain(model, photo, "mixed4d", target=..., groups=6)`` -> ``Explanation``
  (semantic dictionary, activation grid at exact RF centres, NMF groups, gradient x activation), ``explanation_page``, ``nmf``.
"""

from . import reference
from .errors import FeatvisError
from .feature_maps import feature_map_grid, feature_map_overlay
from .figures import save_figure
from .filters import filter_grid, filter_images
from .gradcheck import GradientReport, check_gradients
from .images import load_image, sample_photos, save_image
from .labels import imagenet_labels
from .model import FeatvisModel, as_model
from .models import load_model
from . import optvis
from .optvis import Objective, RenderResult, natural_max, objectives, parse_spec, render
from .optvis import plausibility
from .probe import Probe, capture
from .effective_rf import effective_receptive_field
from .receptive_field import ReceptiveField, receptive_field, receptive_fields, register_rule
from .saliency import SaliencyResult, guided_model, saliency
from .sanity import cascading_randomization, deletion_insertion
from .circuits import expanded_weights, top_connections, weight_similarity
from .explain import Explanation, explain, explanation_page, nmf
from .examples import ExamplesResult, dataset_examples, merge_examples
from .atlas import Atlas, activation_atlas

__version__ = "0.1.0"

__all__ = [
    "FeatvisError",
    "FeatvisModel",
    "GradientReport",
    "Objective",
    "Probe",
    "ReceptiveField",
    "RenderResult",
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
    "expanded_weights",
    "top_connections",
    "weight_similarity",
    "Explanation",
    "explain",
    "explanation_page",
    "nmf",
]
