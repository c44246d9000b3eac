"""Every notebook in notebooks/ is executed (not just stored), headless, with a small step count."""

from __future__ import annotations

import os
from pathlib import Path

import nbclient
import nbformat
import pytest

from featvis.models.weights import WEIGHTS_ENV

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
REAL_MODELS = ('"inceptionv1"', '"squeezenet1_1"', "'inceptionv1'", "'squeezenet1_1'")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_headless(path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    source = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    if any(name in source for name in REAL_MODELS) and not os.environ.get(WEIGHTS_ENV):
        pytest.skip(f"{path.name} uses real ImageNet weights: set {WEIGHTS_ENV}")
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("FEATVIS_NB_STEPS", os.environ.get("FEATVIS_NB_STEPS", "8"))
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    images = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.get("output_type") == "error"]
    assert not errors
    if "Figure(" in source:
        assert images, "figures must render headless as PNG outputs"
