"""Modules that can be called like their main function.

``featvis.saliency`` and ``featvis.receptive_field`` are each both a module (with figures and
helpers: ``featvis.saliency.saliency_figure``) and the name of that module's main function.
A package attribute can hold only one of them, so the module itself is made callable: calling
it calls the function, and ``inspect.signature``/``help`` follow ``__wrapped__`` to it.
"""

from __future__ import annotations

import sys
import types
from typing import Any


class CallableModule(types.ModuleType):
    """A module whose call is its ``__wrapped__`` function's call."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__wrapped__(*args, **kwargs)


def make_callable(module_name: str, function_name: str) -> None:
    """Make the (already imported) module ``module_name`` call its function ``function_name``."""
    module = sys.modules[module_name]
    module.__class__ = CallableModule
    module.__wrapped__ = getattr(module, function_name)
