"""ImageNet class labels, and finding a class by name with helpful suggestions."""

from __future__ import annotations

import difflib
import functools
from importlib import resources
from typing import Sequence

from .._util.errors import FeatvisError


@functools.lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[tuple[str, str], ...]:
    """The 1000 ILSVRC-2012 classes as ``(wnid, names)``, in classifier output order."""
    text = resources.files("featvis").joinpath("data/imagenet_synset_words.txt").read_text("utf-8")
    return tuple(tuple(line.split(" ", 1)) for line in text.splitlines() if line.strip())  # type: ignore[misc]


def imagenet_labels() -> list[str]:
    """Short human-readable ImageNet labels: the first name of each synset (``"espresso"``)."""
    return [names.split(",")[0].strip() for _, names in imagenet_synsets()]


def label_index(labels: Sequence[str] | None, target: str | int) -> int:
    """Index of ``target``, given as an index (``954``, ``"954"``) or a label name (``"banana"``).

    Names match case-insensitively against the labels (and, for ImageNet, every synonym).
    Unknown names raise a FeatvisError that suggests the closest labels.
    """
    if isinstance(target, int) or str(target).strip().lstrip("-").isdigit():
        index = int(target)
        count = len(labels) if labels is not None else None
        if index < 0 or (count is not None and index >= count):
            raise FeatvisError(f"class index {index} is out of range; use 0..{(count or 1) - 1}")
        return index
    if labels is None:
        raise FeatvisError(f"this model has no class labels, so '{target}' cannot be looked up; give a class index")
    wanted = str(target).strip().lower()
    lowered = [label.lower() for label in labels]
    if wanted in lowered:
        return lowered.index(wanted)
    if len(labels) == 1000:  # ImageNet: accept any synonym of a synset
        for index, (_, names) in enumerate(imagenet_synsets()):
            if wanted in (name.strip().lower() for name in names.split(",")):
                return index
    close = difflib.get_close_matches(wanted, lowered, n=5, cutoff=0.5)
    hint = f"; closest: {', '.join(close)}" if close else f"; give a label name or an index 0..{len(labels) - 1}"
    raise FeatvisError(f"unknown class label '{target}'{hint}")


@functools.lru_cache(maxsize=1)
def _inception5h_names() -> tuple[str, ...]:
    text = resources.files("featvis").joinpath("data/inception5h_labels.txt").read_text("utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def inception5h_labels() -> list[str]:
    """The 1008 outputs of Lucid's InceptionV1 (inception5h): ``dummy``, the 1000 ImageNet classes in
    the graph's own order, then ``unused_1001`` ... ``unused_1007`` (source in data/inception5h_labels.txt)."""
    names = list(_inception5h_names())
    return names + [f"unused_{i}" for i in range(len(names), 1008)]
