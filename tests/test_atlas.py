"""`featvis atlas`: sampled vectors are real activations, binning matches numpy, attribution matches a
hand-derived formula, the picture and JSON agree, and a missing extra is one line naming the install.
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import umap  # noqa: F401  (declared in the test extra; the end-to-end test needs it)
from PIL import Image
from torch import nn

import featvis
from featvis.examples.atlas import _forward, activation_atlas, bin_cells
from featvis.examples import sample_collection
from examples_models import slow_cnn
from test_gallery import run_cli

SLOW = f"{Path(__file__).resolve().parent / 'examples_models.py'}:slow_cnn"


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("atlas_collection")
    sample_collection(root, 24, size=40, seed=2)
    return root


def test_binning_matches_numpy_histogram():
    coords = np.random.default_rng(0).normal(size=(500, 2))
    cells = bin_cells(coords, 7)
    counts = np.zeros((7, 7), int)
    np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)
    hist, _, _ = np.histogram2d(coords[:, 0], coords[:, 1], bins=7)  # rows: x bins, columns: y bins
    assert np.array_equal(counts, np.flipud(hist.T.astype(int)))  # our rows run top (high y) to bottom


def headed_cnn() -> featvis.FeatvisModel:
    """conv -> ReLU -> global average -> linear: logit k = sum_c W[k, c] * mean_yx act[c, y, x] + b[k]."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1),
                                    flat=nn.Flatten(), fc=nn.Linear(4, 3)))
    return featvis.FeatvisModel(net, name="headed", input_size=16, labels=["cat", "dog", "cup"]).freeze()


def test_attribution_is_activation_times_the_logit_weight():
    model = headed_cnn()
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = _forward(model, "relu", 2)(x)
    act = featvis.capture(model, x, ["relu"])["relu"]
    expected = torch.einsum("c,bcyx->byx", model.net.fc.weight[2], act) / (16 * 16)
    assert torch.allclose(out["attribution"], expected, atol=1e-6)
    assert torch.equal(out["logits"].argmax(1), model(x).argmax(1))


def test_atlas_cells_are_means_of_real_activation_vectors(collection, tmp_path):
    model = slow_cnn()
    atlas = activation_atlas(model, collection, "conv2", tmp_path / "atlas.png", grid=3, samples=48, cell=16, steps=2,
                             batch=4, workers=0, render_batch=9, progress=False)
    summary = json.loads((tmp_path / "atlas.json").read_text())
    assert summary == json.loads(json.dumps(atlas.summary))
    assert summary["images"] == 24 and summary["samples"] == 48  # two positions per image
    assert sum(cell["count"] for cell in summary["cells"]) == 48
    picture = np.asarray(Image.open(tmp_path / "atlas.png"), dtype=float) / 255
    assert picture.shape == (48, 48, 3)
    filled = {tuple(cell["cell"]) for cell in summary["cells"]}
    for y in range(3):
        for x in range(3):
            if (y, x) not in filled:
                assert np.all(picture[y * 16 : (y + 1) * 16, x * 16 : (x + 1) * 16] == 1.0)  # empty cells stay white
    assert max(cell["opacity"] for cell in summary["cells"]) == 1.0
    # every mean is a convex combination of the layer's activation vectors: its norm is at most the largest one
    largest = 0.0
    for path in sorted(collection.rglob("*.png")):
        act = featvis.capture(model, model.prepare(featvis.load_image(path)), ["conv2"])["conv2"][0]
        largest = max(largest, float(act.flatten(1).norm(dim=0).max()))
    assert all(0 < cell["norm"] <= largest + 1e-5 for cell in summary["cells"])


def test_sampled_vectors_are_activations_of_their_image(collection):
    from featvis.examples.sample import PositionSampler
    from featvis.examples.source import list_images, loader

    model = slow_cnn()
    paths = list_images(collection)
    sampler = PositionSampler(5, 3 * len(paths), 3, seed=0)
    for batch in loader(paths, range(len(paths)), 32, 8, 0):
        sampler.update(batch, {"act": featvis.capture(model, batch.images, ["conv2"])["conv2"]})
    assert sampler.count == 3 * len(paths)
    acts = {}
    for row in range(sampler.count):
        index = int(sampler.image[row])
        if index not in acts:  # [positions, C], each image alone
            image = model.prepare(featvis.load_image(paths[index]))
            acts[index] = featvis.capture(model, image, ["conv2"])["conv2"][0].flatten(1).t()
        assert torch.isclose(acts[index], sampler.vectors[row], atol=1e-5).all(1).any()


def test_missing_extra_is_one_line_naming_the_install(collection, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)
    code, out, err = run_cli(capsys, "atlas", SLOW, "--images", str(collection), "--layer", "conv2", "-o",
                             str(tmp_path / "a.png"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert 'pip install "featvis[atlas]"' in err and not (tmp_path / "a.png").exists()


def test_bad_atlas_input_is_one_line(collection, tmp_path, capsys):
    cases = [(["--layer", "conv9", "-o", str(tmp_path / "a.png")], "unknown layer"),
             (["--layer", "conv2", "-o", str(tmp_path / "a.jpg")], "give -o a .png path"),
             (["--layer", "conv2", "-o", str(tmp_path / "a.png"), "--grid", "0"], "--grid must be between")]
    for argv, message in cases:
        code, out, err = run_cli(capsys, "atlas", SLOW, "--images", str(collection), *argv, "--quiet")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
