"""Filters: first-layer kernels act on the RGB [0, 1] image exactly as the network does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from matplotlib.figure import Figure

import featvis
from featvis import FeatvisError
from featvis.core.figures import figure_bytes, save_figure
from featvis.inspect.filters import conv_layer, filter_grid, filter_images, rgb_kernels


def _interior_equal(model: featvis.FeatvisModel, layer: str, photo: torch.Tensor) -> None:
    """conv'(x) with the folded kernel equals the layer's own pre-activation, away from the padded border."""
    path, conv = conv_layer(model, layer)
    weight, bias = rgb_kernels(model, layer)
    x = model.prepare(photo)
    expected = featvis.capture(model, x, [path])[path]
    ours = F.conv2d(x, weight, bias, stride=conv.stride, padding=conv.padding)
    (pad, _), (stride, _), k = conv.padding, conv.stride, conv.kernel_size[0]
    first = -(-pad // stride)  # first unit whose window starts inside the image
    last = (x.shape[-1] + pad - k) // stride  # last unit whose window ends inside it
    inner = (slice(None), slice(None), slice(first, last + 1), slice(first, last + 1))
    torch.testing.assert_close(ours[inner], expected[inner], rtol=1e-4, atol=1e-3 * float(expected.abs().max()))


def test_inceptionv1_kernels_fold_bgr_255_and_mean(inceptionv1, coffee):
    weight, bias = rgb_kernels(inceptionv1, "conv2d0")
    raw = inceptionv1.module("conv1.conv").weight
    # Caffe input: BGR, 0-255, minus the mean (SOURCE.md) -> RGB kernel = raw kernel flipped to RGB, times 255
    torch.testing.assert_close(weight, raw.flip(1) * 255.0)
    assert weight.shape == (64, 3, 7, 7)
    _interior_equal(inceptionv1, "conv2d0", coffee)


def test_torchvision_kernels_fold_mean_and_std(coffee):
    torch.manual_seed(0)
    model = featvis.as_model(torchvision.models.resnet18()).freeze()
    weight, _ = rgb_kernels(model, "conv1")
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(weight, model.net.conv1.weight / std)
    _interior_equal(model, "conv1", coffee)


def test_kernels_of_a_conv_inside_the_network_are_not_folded():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Conv2d(3, 4, 3))
    model = featvis.as_model(net).freeze()
    weight, bias = rgb_kernels(model, "1")
    assert torch.equal(weight, net[1].weight) and torch.equal(bias, net[1].bias)


def test_filter_images_normalisation_and_selection(inceptionv1):
    weight, _ = rgb_kernels(inceptionv1, "conv2d0")
    per_filter = filter_images(inceptionv1, "conv2d0")
    shared = filter_images(inceptionv1, "conv2d0", normalize="shared")
    assert per_filter.shape == shared.shape == (64, 3, 7, 7)
    assert 0.0 <= float(per_filter.min()) and float(per_filter.max()) <= 1.0
    # zero weight is grey; each kernel's largest |weight| reaches the end of the range
    deviation = (per_filter - 0.5).abs().amax(dim=(1, 2, 3))
    torch.testing.assert_close(deviation, torch.full((64,), 0.5))
    torch.testing.assert_close((shared - 0.5) * 2 * float(weight.abs().max()), weight, rtol=1e-5, atol=1e-4)
    # sign and shape of every kernel survive per-filter scaling
    assert torch.equal((per_filter - 0.5).sign(), weight.sign())
    picked = filter_images(inceptionv1, "conv2d0", [5, 2])
    torch.testing.assert_close(picked, per_filter[[5, 2]])


def test_conv_layer_resolution_and_errors(inceptionv1):
    assert conv_layer(inceptionv1, "conv2d0")[0] == "conv1.conv"
    assert conv_layer(inceptionv1, "mixed3a_3x3")[0] == "inception3a.branch2.1.conv"
    with pytest.raises(FeatvisError, match="holds 6 convolutions; name one of them: inception3a.branch1.conv"):
        conv_layer(inceptionv1, "mixed3a")
    with pytest.raises(FeatvisError, match="no convolution kernels"):
        conv_layer(inceptionv1, "maxpool1")
    with pytest.raises(FeatvisError, match="not RGB"):
        filter_images(inceptionv1, "mixed3a_3x3")
    with pytest.raises(FeatvisError, match="out of range"):
        filter_images(inceptionv1, "conv2d0", [64])
    with pytest.raises(FeatvisError, match="unknown normalisation"):
        filter_images(inceptionv1, "conv2d0", normalize="global")


def test_rgb_grid_draws_the_kernels(inceptionv1):
    fig = filter_grid(inceptionv1, "conv2d0", [0, 1, 2, 3], ncols=2)
    assert isinstance(fig, Figure)
    mosaic = np.asarray(fig.axes[0].images[0].get_array())
    expected = filter_images(inceptionv1, "conv2d0", [0, 1, 2, 3]).permute(0, 2, 3, 1).numpy()
    assert mosaic.shape == (2 * 7 + 1, 2 * 7 + 1, 3)
    np.testing.assert_allclose(mosaic[8:15, 0:7], expected[2], atol=1e-6)  # third kernel: row 1, column 0
    assert [t.get_text() for t in fig.axes[0].texts] == ["0", "1", "2", "3"]


def test_deeper_grid_is_centred_on_zero_with_colorbar(inceptionv1):
    fig = filter_grid(inceptionv1, "mixed3a_3x3", [4, 7], in_channels=[0, 9, 3], normalize="shared")
    ax, bar = fig.axes
    image = ax.images[0]
    low, high = image.get_clim()
    assert low == -high
    mosaic = np.ma.filled(image.get_array(), np.nan)
    weight = inceptionv1.module("inception3a.branch2.1.conv").weight
    np.testing.assert_allclose(mosaic[4:7, 4:7], weight[7, 9].numpy())  # row "filter 7", column "input 9"
    assert high == pytest.approx(float(weight[[4, 7]][:, [0, 9, 3]].abs().max()))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "9", "3"]


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_figures_save_by_extension_deterministically(inceptionv1, tmp_path, suffix, magic):
    path = save_figure(filter_grid(inceptionv1, "conv2d1", range(4), in_channels=range(4)), tmp_path / f"filters{suffix}")
    data = path.read_bytes()
    assert data.startswith(magic)
    again = filter_grid(inceptionv1, "conv2d1", range(4), in_channels=range(4))
    assert data == figure_bytes(again, suffix[1:])  # no timestamps or random ids: same figure, same bytes
    assert not list(tmp_path.glob(".*.tmp"))


def test_unknown_figure_extension_is_refused(inceptionv1, tmp_path):
    with pytest.raises(FeatvisError, match=r"use a \.png, \.svg or \.pdf"):
        save_figure(filter_grid(inceptionv1, "conv2d0", [0]), tmp_path / "filters.jpg")
    assert not (tmp_path / "filters.jpg").exists()
