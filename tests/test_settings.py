"""Relative FEATVIS_WEIGHTS_DIR / FEATVIS_CACHE_DIR mean relative to where the user set them, also
in child processes started elsewhere (notebook kernels); a folder that does not exist is reported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import featvis
from featvis._util.settings import CACHE_ENV, WEIGHTS_ENV

SHOW = "import os, featvis; print(os.environ['{name}'])"


def _env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (WEIGHTS_ENV, CACHE_ENV, "PWD")}
    return {**env, **settings}


def test_relative_setting_resolved_against_the_start_directory_and_inherited(tmp_path):
    (tmp_path / "shared" / "weights").mkdir(parents=True)
    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    expected = str((tmp_path / "shared" / "weights").resolve())
    # the user's shell in repo/ typed ../shared/weights; featvis starts there, then a child runs in notebooks/
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {SHOW.format(name=WEIGHTS_ENV)!r}], cwd='notebooks')"
    code = f"import featvis\n{child}"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "repo", env=_env(**{WEIGHTS_ENV: "../shared/weights"}),
                            capture_output=True, text=True, check=True)
    assert os.path.realpath(result.stdout.strip()) == os.path.realpath(expected)


def test_kernel_started_elsewhere_uses_the_shells_directory(tmp_path):
    """A Jupyter kernel runs in notebooks/ and inherits $PWD (the shell's directory) from the server."""
    (tmp_path / "shared" / "weights").mkdir(parents=True)
    (tmp_path / "repo" / "notebooks").mkdir(parents=True)
    env = _env(**{WEIGHTS_ENV: "../shared/weights", CACHE_ENV: "cache", "PWD": str(tmp_path / "repo")})
    result = subprocess.run([sys.executable, "-c", SHOW.format(name=WEIGHTS_ENV)], cwd=tmp_path / "repo" / "notebooks", env=env,
                            capture_output=True, text=True, check=True)
    assert os.path.realpath(result.stdout.strip()) == os.path.realpath(tmp_path / "shared" / "weights")
    result = subprocess.run([sys.executable, "-c", SHOW.format(name=CACHE_ENV)], cwd=tmp_path / "repo" / "notebooks", env=env,
                            capture_output=True, text=True, check=True)
    assert os.path.isabs(result.stdout.strip())  # a cache that does not exist yet: under the current directory
    assert os.path.realpath(result.stdout.strip()) == os.path.realpath(tmp_path / "repo" / "notebooks" / "cache")


def test_weights_dir_that_does_not_exist_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("FEATVIS_WEIGHTS_URL", "http://127.0.0.1:9/")
    with pytest.raises(featvis.FeatvisError, match=r"FEATVIS_WEIGHTS_DIR is set to .*nowhere, which does not exist") as info:
        featvis.load_model("inceptionv1", progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "cache").exists()  # nothing downloaded
