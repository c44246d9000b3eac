"""Analysis never changes the user's model: every featvis analysis runs it in eval mode.

A network built in PyTorch starts in training mode, and a model loaded with ``load_state_dict``
stays in it unless its user calls ``.eval()``. Run in training mode, batch norm normalizes by
the statistics of the batch at hand (a single photo, or an image being optimised) and
*overwrites its running statistics* with them, and dropout zeroes units at random: results
become noise and the user's model is silently damaged. So each public analysis is wrapped in
``@analysis``: for its duration every module is in eval mode, then each module gets its own
mode back (a model whose user froze only its batch norms keeps exactly that mix).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, TypeVar

from torch import nn

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module of ``model`` in eval mode for the duration; each module's own mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    if not any(training for _, training in modes):
        yield  # already in eval mode (every model load_model gives): nothing to change or restore
        return
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training  # not .train(): that would set every child to the parent's mode


def analysis(function: F) -> F:
    """Run ``function(model, ...)`` with ``model`` in eval mode (see module docstring)."""

    @functools.wraps(function)
    def run(model, *args, **kwargs):
        if not isinstance(model, nn.Module):
            return function(model, *args, **kwargs)  # the function names the problem (as_model)
        with eval_mode(model):
            return function(model, *args, **kwargs)

    run.runs_in_eval_mode = True  # type: ignore[attr-defined]  # what tests/test_model_modes.py checks on every public analysis
    return run  # type: ignore[return-value]
