"""Sanity checks: the similarity measures match SciPy / scikit-image, the orderings of Adebayo et
al. (2018) hold on the real GoogLeNet, and deletion/insertion tell a real map from a random one."""

from __future__ import annotations

import math

import numpy as np
import scipy.stats
import skimage.metrics
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

import featvis
from featvis import FeatvisError
from featvis.saliency import saliency
from featvis.saliency.sanity import (
    SanityStep,
    blurred,
    cascading_randomization,
    deletion_insertion,
    execution_order,
    randomize_,
    sanity_figure,
    spearman,
    ssim,
)

ESPRESSO = 967
GOOGLENET_BLOCKS = ["conv1", "conv2", "conv3", "inception3a", "inception3b", "inception4a", "inception4b",
                    "inception4c", "inception4d", "inception4e", "inception5a", "inception5b", "fc"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore:An input array is constant")
@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.floats(-5, 5, allow_nan=False)), min_size=3, max_size=40))
def test_spearman_matches_scipy_with_ties(pairs):
    a = np.array([p[0] for p in pairs], dtype=float)  # few distinct values: many ties
    b = np.array([p[1] for p in pairs])
    expected = scipy.stats.spearmanr(a, b).statistic
    ours = spearman(torch.from_numpy(a), b)
    if np.isnan(expected):
        assert math.isnan(ours)
    else:
        assert ours == pytest.approx(expected, abs=1e-9)


def test_ssim_matches_scikit_image():
    generator = np.random.default_rng(0)
    a = generator.random((64, 48))
    for b in (a, np.clip(a + 0.1 * generator.standard_normal(a.shape), 0, 1), generator.random((64, 48)), 1 - a):
        expected = skimage.metrics.structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                                 use_sample_covariance=False)
        assert ssim(a, b) == pytest.approx(expected, abs=1e-9)
    with pytest.raises(FeatvisError, match="at least 11x11"):
        ssim(a[:8, :8], a[:8, :8])


def test_execution_order_and_randomize(inceptionv1):
    assert execution_order(inceptionv1, torch.zeros(1, 3, 224, 224)) == GOOGLENET_BLOCKS  # the paper's Table 1
    vgg = featvis.as_model(torchvision.models.vgg11(), input_size=64).freeze()  # plain Sequentials are opened up
    assert execution_order(vgg, torch.zeros(1, 3, 64, 64)) == [  # VGG-A: 8 convolutions, 3 fully connected
        "features.0", "features.3", "features.6", "features.8", "features.11", "features.13", "features.16",
        "features.18", "classifier.0", "classifier.3", "classifier.6"]
    block = torch.nn.Conv2d(8, 8, 3)
    before = [p.detach().clone() for p in block.parameters()]
    with torch.no_grad():
        randomize_(block, torch.Generator().manual_seed(0))
    for old, new in zip(before, block.parameters()):
        assert not torch.equal(old, new)
        assert float(new.detach().std()) == pytest.approx(float(old.std()), rel=0.25)


@pytest.fixture(scope="module")
def cascades(inceptionv1, coffee) -> dict[str, list[SanityStep]]:
    layers = ["fc", "mixed5b", "mixed5a", "mixed4e", "mixed4d"]
    return {method: cascading_randomization(inceptionv1, coffee, method, target="espresso", layers=layers)
            for method in ("saliency", "guided")}


def test_cascading_randomization_orderings_of_adebayo_et_al(cascades, inceptionv1, coffee):
    gradient, guided = cascades["saliency"], cascades["guided"]
    assert [step.layer for step in gradient] == ["fc", "mixed5b", "mixed5a", "mixed4e", "mixed4d"]
    assert [step.depth for step in gradient] == [1, 2, 3, 4, 5]
    # Adebayo et al., Fig. 2 / 4: the gradient map decorrelates from the trained model's at once...
    assert abs(gradient[-1].spearman) < 0.2
    assert gradient[-1].spearman_abs < 0.5
    # ...while guided backprop's barely changes when the top layers are randomized
    assert guided[-1].spearman > 0.8 and guided[-1].spearman_abs > 0.7
    for a, b in zip(gradient, guided):
        assert b.spearman > a.spearman + 0.3 and b.spearman_abs > a.spearman_abs + 0.2 and b.ssim > a.ssim
    # randomization works on a copy: the model itself still sees espresso (SOURCE.md: p ~ 0.90)
    assert inceptionv1.classify([coffee], top=1)[0][0][:2] == (ESPRESSO, "espresso")


def test_sanity_steps_serialise_and_plot(cascades):
    step = SanityStep(1, "fc", float("nan"), 0.5, 0.25)
    assert step.to_dict() == {"depth": 1, "layer": "fc", "spearman": None, "spearman_abs": 0.5, "ssim": 0.25}
    fig = sanity_figure(cascades)
    assert [ax.get_title() for ax in fig.axes] == ["saliency", "guided"]
    line = fig.axes[1].lines[0]
    assert list(line.get_ydata()) == [1.0] + [s.spearman for s in cascades["guided"]]


def test_deletion_and_insertion_curves_end_where_they_must(inceptionv1, coffee):
    x = inceptionv1.prepare(coffee)
    random_map = torch.rand(224, 224, generator=torch.Generator().manual_seed(0))
    scores = deletion_insertion(inceptionv1, x, random_map, ESPRESSO, steps=4)
    with torch.no_grad():
        probs = [float(inceptionv1(image).softmax(1)[0, ESPRESSO]) for image in (x, torch.zeros_like(x), blurred(x))]
    assert scores.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [float(scores.deletion[0]), float(scores.deletion[-1])] == pytest.approx([probs[0], probs[1]], abs=1e-5)
    assert [float(scores.insertion[0]), float(scores.insertion[-1])] == pytest.approx([probs[2], probs[0]], abs=1e-5)
    assert scores.deletion_auc == pytest.approx(float(np.trapezoid(scores.deletion.numpy(), scores.fractions.numpy())))
    with pytest.raises(FeatvisError, match="compute the map on the same input"):
        deletion_insertion(inceptionv1, x, random_map[:100], ESPRESSO)


def test_blurred_canvas_hides_the_object(inceptionv1, coffee):
    x = inceptionv1.prepare(coffee)
    with torch.no_grad():
        assert float(inceptionv1(blurred(x)).softmax(1)[0, ESPRESSO]) < 0.1
    torch.testing.assert_close(blurred(torch.full((1, 3, 32, 32), 0.3)), torch.full((1, 3, 32, 32), 0.3))


def test_real_maps_beat_random_maps(inceptionv1, coffee):
    """Petsiuk et al.'s scores separate an explanation from a random map."""
    x = inceptionv1.prepare(coffee)
    random_map = torch.rand(224, 224, generator=torch.Generator().manual_seed(0))
    ig = saliency(inceptionv1, x, "ig", target=ESPRESSO, steps=16)
    gradcam = saliency(inceptionv1, x, "gradcam", target=ESPRESSO)
    real_deletion = deletion_insertion(inceptionv1, x, ig.map, ESPRESSO, steps=16).deletion_auc
    real_insertion = deletion_insertion(inceptionv1, x, gradcam.map, ESPRESSO, steps=16).insertion_auc
    random = deletion_insertion(inceptionv1, x, random_map, ESPRESSO, steps=16)
    # measured: IG 0.031 vs random 0.069 (deletion), Grad-CAM 0.83 vs random 0.65 (insertion); a random map
    # of 7x7 blobs, Grad-CAM's resolution, scores worse still (0.23 deletion, 0.30 insertion)
    assert real_deletion < 0.75 * random.deletion_auc
    assert real_insertion > random.insertion_auc + 0.1
