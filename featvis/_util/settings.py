"""featvis's path settings from the environment, relative paths resolved where the user set them.

``FEATVIS_WEIGHTS_DIR=../shared/weights`` is relative to the directory the user typed it in. A
process that changes directory, or a child started elsewhere (a Jupyter kernel runs in the
notebook's folder), would read it against the wrong folder. So on ``import featvis`` each
relative path setting is resolved against the current directory, or against ``$PWD`` (the
shell's directory, which Jupyter kernels and other children inherit) when only that one holds
it, and written back to the environment as an absolute path that child processes inherit.
"""

from __future__ import annotations

import os
from pathlib import Path

WEIGHTS_ENV = "FEATVIS_WEIGHTS_DIR"
CACHE_ENV = "FEATVIS_CACHE_DIR"
PATH_SETTINGS = (WEIGHTS_ENV, CACHE_ENV)


def resolve_path(value: str) -> Path:
    """``value`` as an absolute path (see the module docstring for the base of a relative one)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    bases = [Path.cwd()]
    shell = os.environ.get("PWD")
    if shell and Path(shell).is_absolute() and Path(shell).is_dir():
        bases.append(Path(shell))
    found = next((base for base in bases if (base / path).exists()), bases[0])
    return Path(os.path.normpath(found / path))


def resolve_settings() -> None:
    """Make every relative path setting in ``os.environ`` absolute, once, for this process and its children."""
    for name in PATH_SETTINGS:
        value = os.environ.get(name)
        if value:
            os.environ[name] = str(resolve_path(value))


def setting_path(name: str) -> Path | None:
    """The path setting ``name`` as an absolute path, or None when unset or empty."""
    value = os.environ.get(name)
    return resolve_path(value) if value else None
