"""Where hooks go: one module per site, for anything that hooks a layer's output (probes, captum's layer
methods, injections), and `every_module_hooked` for the passes that measure every module at once.

A site (``FeatvisModel.site``) is a module path, or ``path#k``: the k-th call of a module that runs
several times in one forward pass. Hooks on the module itself would see every call; ``site_modules``
gives, for ``path#k``, a pass-through ``nn.Identity`` that only the k-th call goes through, so a forward
hook, an early exit, a replaced output or captum's ``LayerGradCam`` on it see that call alone. A site
of a module that runs once is the module itself: nothing changes in the user's model there.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

from torch import nn

from ..models.wrapper import FeatvisModel, split_call


@contextlib.contextmanager
def every_module_hooked(net: nn.Module, after: Callable[[str], Callable] | None = None,
                        before: Callable[[str], Callable] | None = None) -> Iterator[None]:
    """For the duration, every named module of ``net`` carries the forward hook ``after(path)`` and the forward
    pre-hook ``before(path)`` (the passes that measure a whole model: shapes, fields, producers); removed on exit."""
    handles = []
    try:
        for path, module in net.named_modules():
            if path:
                if before is not None:
                    handles.append(module.register_forward_pre_hook(before(path)))
                if after is not None:
                    handles.append(module.register_forward_hook(after(path)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def site_modules(model: FeatvisModel, sites: Sequence[str]) -> Iterator[dict[str, nn.Module]]:
    """``{site: module to hook}`` for the duration; the counting hooks are removed on exit."""
    taps: dict[str, dict[int, nn.Module]] = {}
    found: dict[str, nn.Module] = {}
    for site in sites:
        path, call = split_call(site)
        if call is None:
            found[site] = model.net.get_submodule(path)
        else:
            found[site] = taps.setdefault(path, {}).setdefault(call, nn.Identity())
    counts = dict.fromkeys(taps, 0)

    def reset(*_) -> None:
        counts.update(dict.fromkeys(counts, 0))

    def tap(path: str):
        def hook(module: nn.Module, inputs, output):
            counts[path] += 1
            chosen = taps[path].get(counts[path])
            return chosen(output) if chosen is not None else None

        return hook

    handles = []
    try:
        if taps:
            handles.append(model.net.register_forward_pre_hook(reset))
            handles += [model.net.get_submodule(path).register_forward_hook(tap(path)) for path in taps]
        yield found
    finally:
        for handle in handles:
            handle.remove()
