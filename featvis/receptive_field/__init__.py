"""Receptive fields of any CNN, exactly: which input pixels can a unit of a layer see?

The theory follows Araujo, Norris & Sim, "Computing Receptive Fields of Convolutional Neural
Networks" (Distill, 2019). Along each axis, unit ``i`` of a layer sees the input pixels
``[S*i - P, S*i - P + r - 1]``: ``r`` is the field size, ``S`` the effective stride and ``P``
the effective padding. A window of k taps with stride s, padding p and dilation d turns an
incoming ``(S, lo, hi)`` (unit i sees ``[S*i + lo, S*i + hi]``) into
``(S*s, lo - S*p, hi + S*(d*(k-1) - p))``; ceil_mode only adds a last window.

Exposes ``receptive_field(model, layer)``, ``receptive_fields(model, layers)``, ``relative_field(model,
source, target)`` -> ``ReceptiveField`` (``Box`` for a unit's field), ``register_rule`` with ``Window``,
``POINTWISE``, ``GLOBAL`` for your own layers, and ``effective_receptive_field`` (Luo et al. 2016).
Modules: ``result`` (what a field is), ``field`` (the field a tensor carries), ``rules`` (how each
operation moves it), ``tracer`` (the walk), ``effective`` (the gradient-measured field).
``featvis.receptive_field(model, layer)`` calls ``receptive_field``: the package is callable.
"""

from .._util.callable_module import make_callable
from .effective import EffectiveField, effective_field_figure, effective_receptive_field
from .result import Box, ReceptiveField
from .rules import GLOBAL, POINTWISE, Window, register_rule
from .tracer import receptive_field, receptive_fields, relative_field

__all__ = ["Box", "EffectiveField", "GLOBAL", "POINTWISE", "ReceptiveField", "Window", "effective_field_figure",
           "effective_receptive_field", "receptive_field", "receptive_fields", "register_rule", "relative_field"]

make_callable(__name__, "receptive_field")  # featvis.receptive_field(...) calls it; the package's names stay reachable
