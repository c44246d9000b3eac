"""The effective receptive field against what Luo et al. (2016) established.

- Uniform weights, no nonlinearity (their Section 2.2): the gradient of the centre unit of n
  stacked k x k convolutions is the n-fold convolution of a uniform k-tap box, a distribution with
  variance n (k^2 - 1) / 12 per axis; it becomes Gaussian, so its size grows like sqrt(n) while the
  theoretical field grows like n.
- Real networks (their Section 4): the effective field of GoogLeNet's units is concentrated at the
  centre and fills only part of the theoretical field, a part that shrinks with depth. And no pixel
  outside the theoretical field has any gradient at all.
"""

from __future__ import annotations

import math

import pytest
import torch
from matplotlib.figure import Figure
from torch import nn

import featvis
from featvis.receptive_field.effective import effective_field_figure, effective_receptive_field
from featvis.core.figures import save_figure
from featvis.receptive_field import Box


def uniform_stack(n: int, kernel: int = 3) -> featvis.FeatvisModel:
    """n stacked kernel x kernel convolutions, every weight equal, no bias, no activation."""
    net = nn.Sequential(nn.Conv2d(3, 1, kernel, padding=kernel // 2, bias=False),
                        *(nn.Conv2d(1, 1, kernel, padding=kernel // 2, bias=False) for _ in range(n - 1)))
    with torch.no_grad():
        for param in net.parameters():
            param.fill_(1.0 / param[0].numel())
    return featvis.as_model(net, input_size=160)


@pytest.mark.parametrize("n, kernel", [(8, 3), (32, 3), (6, 5)])
def test_uniform_stack_has_the_variance_of_n_box_convolutions(n, kernel):
    erf = effective_receptive_field(uniform_stack(n, kernel), str(n - 1), samples=2)
    expected = math.sqrt(n * (kernel**2 - 1) / 12)
    assert erf.unit == (80, 80) and erf.center == (80.0, 80.0)
    assert erf.std == pytest.approx((expected, expected), rel=1e-5)
    assert erf.theoretical.size == ((kernel - 1) * n + 1,) * 2


def test_effective_field_grows_like_sqrt_n_theoretical_like_n():
    small, large = (effective_receptive_field(uniform_stack(n), str(n - 1), samples=1) for n in (8, 32))
    assert large.theoretical.size[0] / small.theoretical.size[0] == pytest.approx(65 / 17)  # ~4x
    assert large.size / small.size == pytest.approx(2.0, abs=0.15)  # sqrt(32 / 8)
    assert large.fraction < 0.55 * small.fraction


@pytest.fixture(scope="module")
def fields(inceptionv1):
    return {layer: effective_receptive_field(inceptionv1, layer, samples=8) for layer in ("mixed3a", "mixed4a")}


def test_real_effective_field_is_a_concentrated_part_of_the_theoretical(fields):
    erf = fields["mixed4a"]
    theory = erf.theoretical.visible(erf.unit)
    assert (theory.height, theory.width) == (171, 171)  # fully inside the 224 px input
    assert erf.size < 0.7 * theory.height and max(erf.std) < theory.height / 6
    assert abs(erf.center[0] - (theory.y0 + theory.y1 - 1) / 2) < 1e-9
    half = Box(theory.y0 + 43, theory.x0 + 43, theory.y1 - 43, theory.x1 - 43)  # middle half
    grad = erf.gradient
    central = grad[half.y0 : half.y1, half.x0 : half.x1].sum() / grad.sum()
    assert central > 0.75  # a field spread evenly over the box would put 25% there


def test_no_gradient_outside_the_theoretical_field(fields):
    for erf in fields.values():
        theory = erf.theoretical.visible(erf.unit)
        inside = torch.zeros_like(erf.gradient, dtype=torch.bool)
        inside[theory.y0 : theory.y1, theory.x0 : theory.x1] = True
        assert erf.gradient[~inside].abs().max() == 0 and erf.gradient[inside].sum() > 0


def test_deeper_layers_see_relatively_less(fields):
    assert fields["mixed4a"].size > fields["mixed3a"].size
    assert fields["mixed4a"].fraction < fields["mixed3a"].fraction


def test_photos_and_figure(inceptionv1, coffee, chelsea, tmp_path):
    erf = effective_receptive_field(inceptionv1, "mixed3a", [coffee, chelsea])
    assert erf.source == "photos" and erf.inputs == 2 and erf.gradient.shape == (224, 224)
    assert erf.size < erf.theoretical.size[0]
    fig = effective_field_figure(erf, "inceptionv1")
    assert isinstance(fig, Figure) and len(fig.axes[0].patches) == 2
    path = save_figure(fig, tmp_path / "erf.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert erf.to_dict()["theoretical_size"] == [59, 59] and erf.to_dict()["source"] == "photos"


def test_bad_arguments_are_one_line_errors():
    model = uniform_stack(2)
    with pytest.raises(featvis.FeatvisError, match="mass must be between 0 and 1"):
        effective_receptive_field(model, "1", mass=1.5)
    with pytest.raises(featvis.FeatvisError, match="no images given"):
        effective_receptive_field(model, "1", [])
    with pytest.raises(featvis.FeatvisError, match="unknown layer 'conv9'"):
        effective_receptive_field(model, "conv9")
