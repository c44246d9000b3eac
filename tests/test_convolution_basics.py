"""The lecture's facts about convolution and pooling, checked on featvis.reference and featvis.core.shapes.

The same facts are shown in notebooks/01_convolution_basics.ipynb. Ground truths: PyTorch's
layers, hand-computed numbers from the definitions, and scikit-image's Sobel edge map.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage import data, filters
from torch import nn

from featvis import reference
from featvis.core.shapes import conv_output_shape, conv_param_count, pool_output_shape

EDGE_KERNEL = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=np.float64)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_4x4_input_and_2x2_kernel_give_3x3_activations_with_4_weights():
    image = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    kernel = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    out = reference.conv2d(image, kernel)
    assert out.shape == (1, 1, 3, 3) and conv_output_shape(4, 2) == (3, 3)
    # each output is x[i, j] - x[i+1, j+1] = -5 on this ramp
    np.testing.assert_array_equal(out, np.full((1, 1, 3, 3), -5.0))
    np.testing.assert_array_equal(out, F.conv2d(torch.from_numpy(image), torch.from_numpy(kernel)).numpy())
    assert conv_param_count(1, 1, 2, bias=False) == 4 == _params(nn.Conv2d(1, 1, 2, bias=False))


def test_edge_kernel_finds_the_edges_of_a_real_photo():
    photo = data.camera().astype(np.float64) / 255.0
    response = reference.conv2d(photo[None, None], EDGE_KERNEL[None, None])[0, 0]
    torch_response = F.conv2d(torch.from_numpy(photo)[None, None], torch.from_numpy(EDGE_KERNEL)[None, None])[0, 0]
    np.testing.assert_allclose(response, torch_response.numpy(), atol=1e-12)
    # the weights sum to zero: a flat region gives exactly nothing
    assert EDGE_KERNEL.sum() == 0
    np.testing.assert_array_equal(reference.conv2d(np.full((1, 1, 5, 5), 180.0), EDGE_KERNEL[None, None]), 0.0)
    # on the photo it responds where scikit-image's Sobel filter sees edges, and stays quiet elsewhere
    sobel = filters.sobel(photo)[1:-1, 1:-1]
    strong, flat = sobel >= np.quantile(sobel, 0.95), sobel <= np.quantile(sobel, 0.5)
    assert np.abs(response[strong]).mean() > 10 * np.abs(response[flat]).mean()


def test_zero_padding_keeps_the_size_and_stride_2_halves_it():
    photo = torch.from_numpy(data.camera()[:64, :64].astype(np.float64))[None, None]
    kernel = torch.from_numpy(EDGE_KERNEL)[None, None]
    padded = reference.conv2d(photo, kernel, padding=1)
    assert padded.shape[-2:] == photo.shape[-2:] == conv_output_shape(64, 3, padding=1)
    assert torch.allclose(padded, F.conv2d(photo, kernel, padding=1), atol=1e-9)
    strided = reference.conv2d(photo, kernel, stride=2, padding=1)
    assert strided.shape[-2:] == (32, 32) == conv_output_shape(64, 3, stride=2, padding=1)
    assert torch.allclose(strided, F.conv2d(photo, kernel, stride=2, padding=1), atol=1e-9)


def test_a_3_channel_input_needs_a_3d_kernel_whose_channel_results_are_summed():
    rng = np.random.default_rng(0)
    rgb = rng.random((1, 3, 6, 6))
    kernels = rng.standard_normal((4, 3, 3, 3))  # N = 4 kernels, each 3 x 3 x 3
    out = reference.conv2d(rgb, kernels)
    assert out.shape == (1, 4, 4, 4)  # N kernels give N output channels
    per_channel = sum(reference.conv2d(rgb[:, [c]], kernels[:, [c]]) for c in range(3))
    np.testing.assert_allclose(out, per_channel, atol=1e-12)
    np.testing.assert_allclose(out, F.conv2d(torch.from_numpy(rgb), torch.from_numpy(kernels)).numpy(), atol=1e-12)
    assert conv_param_count(3, 4, 3, bias=False) == 4 * 3 * 3 * 3 == 108
    assert conv_param_count(3, 4, 3) == 112 == _params(nn.Conv2d(3, 4, 3))


def test_2x2_max_and_mean_pooling_with_stride_2_on_a_4x4_map():
    feature_map = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]], dtype=np.float64)[None, None]
    maxed = reference.max_pool2d(feature_map, 2, stride=2)
    meaned = reference.avg_pool2d(feature_map, 2, stride=2)
    np.testing.assert_array_equal(maxed[0, 0], [[6, 8], [3, 4]])
    np.testing.assert_array_equal(meaned[0, 0], [[3.25, 5.25], [2, 2]])
    as_tensor = torch.from_numpy(feature_map)
    np.testing.assert_array_equal(maxed, F.max_pool2d(as_tensor, 2, 2).numpy())
    np.testing.assert_array_equal(meaned, F.avg_pool2d(as_tensor, 2, 2).numpy())
    assert pool_output_shape(4, 2, 2) == (2, 2)


def _receptive_field(dilation: int) -> tuple[int, int, int]:
    """Rows and columns spanned by the pixels one output depends on, and how many there are,
    measured as the non-zero entries of that output's gradient."""
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64, requires_grad=True)
    weight = torch.ones(1, 1, 3, 3, dtype=torch.float64)
    out = reference.conv2d(x, weight, dilation=dilation)
    (grad,) = torch.autograd.grad(out[0, 0, 0, 0], x)
    rows, cols = torch.nonzero(grad[0, 0], as_tuple=True)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1), len(rows)


def test_dilation_enlarges_the_receptive_field_with_the_same_parameters():
    assert _receptive_field(1) == (3, 3, 9)
    assert _receptive_field(2) == (5, 5, 9)
    assert _params(nn.Conv2d(1, 1, 3, dilation=2, bias=False)) == _params(nn.Conv2d(1, 1, 3, bias=False)) == 9
    dilated = F.conv2d(torch.zeros(1, 1, 9, 9), torch.zeros(1, 1, 3, 3), dilation=2)
    assert conv_output_shape(9, 3, dilation=2) == (5, 5) == tuple(dilated.shape[-2:])
