"""featvis.check_gradients: it passes correct gradients, catches wrong ones, and checks real layers.

Ground truths: central finite differences, the reference backward (featvis.reference,
itself checked against PyTorch in test_reference.py) and, for deliberate alterations,
a hand-derived expected gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import featvis
from featvis import reference
from featvis import FeatvisError
from featvis.reference.gradcheck import EXPECTED_GRADIENT, FINITE_DIFFERENCES, REFERENCE_BACKWARD
from featvis.core.shapes import pool_output_shape


def _rows(report, against):
    return {c.tensor: c for c in report.comparisons if c.against == against}


def test_reference_ops_pass_as_functions():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 6, 5, generator=g, requires_grad=True)  # float32 in: checked in float64
    w = torch.randn(4, 2, 3, 2, generator=g, requires_grad=True)
    b = torch.randn(4, generator=g, requires_grad=True)
    conv = featvis.check_gradients(lambda x, w, b: reference.conv2d(x, w, b, 2, "valid", (1, 2), 2), x, w, b)
    assert conv.passed and set(_rows(conv, FINITE_DIFFERENCES)) == {"input 0", "input 1", "input 2"}
    assert featvis.check_gradients(lambda x: reference.max_pool2d(x, 3, 2, 1, ceil_mode=True), x).passed
    assert featvis.check_gradients(lambda x: reference.avg_pool2d(x, 2, 1, 1, count_include_pad=False), x).passed


@pytest.mark.parametrize(
    "module",
    [
        nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, dilation=(1, 2), groups=2),
        nn.Conv2d(4, 3, 3, padding="same", padding_mode="reflect", bias=False),
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
        nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    ],
    ids=["conv", "conv-reflect", "maxpool", "avgpool"],
)
def test_layers_are_checked_against_finite_differences_and_the_reference(module):
    x = torch.randn(1, 4, 7, 6, generator=torch.Generator().manual_seed(2), requires_grad=True)
    report = featvis.check_gradients(module, x)
    assert report.passed, str(report)
    names = ["input 0"] + [name for name, _ in module.named_parameters()]
    assert set(_rows(report, FINITE_DIFFERENCES)) == set(names)
    assert set(_rows(report, REFERENCE_BACKWARD)) == set(names)
    assert all(c.compared == c.total for c in report.comparisons)


class _Scaled(torch.autograd.Function):
    """tanh with a backward that is wrong by a factor: what check_gradients must catch."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.save_for_backward(x)
        ctx.factor = factor
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (1 - torch.tanh(x) ** 2) * ctx.factor, None


def test_a_wrong_backward_fails_and_the_table_says_where():
    x = torch.randn(3, 4, requires_grad=True)
    assert featvis.check_gradients(lambda x: _Scaled.apply(x, 1.0), x).passed
    report = featvis.check_gradients(lambda x: _Scaled.apply(x, 1.01), x)
    assert not report.passed
    (failure,) = report.failures()
    assert (failure.tensor, failure.against) == ("input 0", FINITE_DIFFERENCES)
    assert 0.009 < failure.max_rel_error < 0.011
    text = str(report)
    assert "FAILED" in text and "finite differences" in text and "FAIL" in text.splitlines()[-1]


class _WrongConv(nn.Conv2d):
    """A Conv2d whose input gradient is wrong at one pixel only: sampled finite differences
    miss it, the complete reference-backward comparison catches it."""

    def forward(self, x):
        out = super().forward(x)
        return out + _Nudge.apply(x).sum() * 0


class _Nudge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        wrong = grad.clone()
        wrong[0, 0, -1, -1] += 1.0
        return wrong


def test_reference_backward_covers_what_sampling_skips():
    torch.manual_seed(0)
    module = _WrongConv(2, 3, 3)
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    report = featvis.check_gradients(module, x, samples=5)
    sampled, complete = _rows(report, FINITE_DIFFERENCES)["input 0"], _rows(report, REFERENCE_BACKWARD)["input 0"]
    assert (sampled.compared, complete.compared) == (5, 72)
    assert sampled.passed and not complete.passed
    assert complete.max_abs_error == pytest.approx(1.0)
    assert not report.passed


class _Redirected(torch.autograd.Function):
    """A ReLU whose backward lets gradient through wherever it points up (a redirected-ReLU-like
    alteration): deliberately not the true derivative."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x > 0) | (grad < 0))


def test_expected_grad_checks_exactly_the_claimed_alteration():
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3), requires_grad=True)
    claimed = featvis.check_gradients(_Redirected.apply, x, expected_grad=lambda inputs, g: g * ((inputs[0] > 0) | (g < 0)))
    assert claimed.passed, str(claimed)
    fd = _rows(claimed, FINITE_DIFFERENCES)["input 0"]
    assert not fd.counted and not fd.passed  # the alteration is real: autograd departs from the true gradient
    assert "(info)" in str(claimed)
    # claiming a different alteration (plain ReLU, or gradient everywhere) fails
    for wrong in (lambda inputs, g: g * (inputs[0] > 0), lambda inputs, g: g):
        report = featvis.check_gradients(_Redirected.apply, x, expected_grad=wrong)
        assert not report.passed
        assert [c.against for c in report.failures()] == [EXPECTED_GRADIENT]


def test_expected_grad_must_cover_the_checked_inputs():
    x, y = torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True)
    with pytest.raises(FeatvisError, match="one entry per input"):
        featvis.check_gradients(torch.mul, x, y, expected_grad=lambda inputs, g: g)
    with pytest.raises(FeatvisError, match="inputs requiring grad"):
        featvis.check_gradients(torch.mul, x, y, expected_grad=lambda inputs, g: (g * inputs[1], None))


def test_sampling_is_seeded_and_nothing_is_modified():
    torch.manual_seed(0)
    module = nn.Conv2d(3, 4, 3)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = torch.randn(1, 3, 5, 5, requires_grad=True)
    x_before = x.detach().clone()
    first = featvis.check_gradients(module, x, samples=7, seed=5)
    again = featvis.check_gradients(module, x, samples=7, seed=5)
    assert first == again  # same seed, same coordinates, same numbers
    assert _rows(first, FINITE_DIFFERENCES)["weight"].compared == 7
    assert module.weight.dtype == torch.float32 and x.dtype == torch.float32
    assert torch.equal(x.detach(), x_before)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_nothing_to_check_is_a_named_error():
    with pytest.raises(FeatvisError, match="requires_grad"):
        featvis.check_gradients(torch.tanh, torch.randn(3))


# ----------------------------------------------------------------------------- real layers


def test_googlenet_5x5_branch_conv_with_real_weights(inceptionv1, coffee):
    """inception4a's 5x5 conv (16 -> 48 channels), on its real input from a photo, cropped to 8x8."""
    conv = inceptionv1.module("inception4a.branch3.1.conv")
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (5, 5)
    activation = featvis.capture(inceptionv1, inceptionv1.prepare(coffee), ["inception4a.branch3.0"])["inception4a.branch3.0"]
    x = activation[:, :, 3:11, 3:11].clone().requires_grad_()
    report = featvis.check_gradients(conv, x, samples=60)
    assert report.passed, str(report)
    assert set(_rows(report, REFERENCE_BACKWARD)) == {"input 0", "weight", "bias"}  # frozen weights are checked too
    assert _rows(report, REFERENCE_BACKWARD)["weight"].compared == 48 * 16 * 5 * 5
    assert not any(p.requires_grad for p in conv.parameters())  # the fixture's model stays frozen


def test_googlenet_ceil_mode_pool(inceptionv1, coffee):
    """maxpool2 (3x3, stride 2, ceil mode) on its real input, cropped to 12x12 where ceil mode adds a window."""
    pool = inceptionv1.module("maxpool2")
    assert isinstance(pool, nn.MaxPool2d) and pool.ceil_mode
    assert pool_output_shape(12, 3, 2, ceil_mode=True) == (6, 6) != pool_output_shape(12, 3, 2)
    activation = featvis.capture(inceptionv1, inceptionv1.prepare(coffee), ["lrn2"])["lrn2"][:, :32, :12, :12]
    # post-ReLU zeros tie inside windows, where the max has no derivative; a tiny jitter breaks the ties
    jitter = 1e-3 * torch.rand(activation.shape, generator=torch.Generator().manual_seed(0))
    x = (activation + jitter).requires_grad_()
    report = featvis.check_gradients(pool, x, samples=150)
    assert report.passed, str(report)
    assert _rows(report, REFERENCE_BACKWARD)["input 0"].compared == x.numel()
