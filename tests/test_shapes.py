"""featvis.core.shapes against the shapes and parameter counts PyTorch's own layers produce."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from featvis import FeatvisError
from featvis.core.shapes import conv_output_shape, conv_param_count, pool_output_shape

SWEEP = settings(max_examples=100, deadline=None, derandomize=True)
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

sizes = st.tuples(st.integers(1, 12), st.integers(1, 12))
pairs = st.tuples(st.integers(1, 4), st.integers(1, 4))


def _outcome(call):
    """The call's result, or the fact that it refused."""
    try:
        return call()
    except (RuntimeError, ValueError):
        return "refused"


@SWEEP
@given(sizes, pairs, pairs, st.one_of(st.just("same"), st.just("valid"), st.tuples(st.integers(0, 3), st.integers(0, 3))), pairs)
def test_conv_output_shape_is_pytorchs(size, kernel, stride, padding, dilation):
    def theirs():
        x = torch.zeros(1, 1, *size)
        return tuple(F.conv2d(x, torch.zeros(1, 1, *kernel), stride=stride, padding=padding, dilation=dilation).shape[-2:])

    expected = _outcome(theirs)
    if expected == "refused":
        with pytest.raises(FeatvisError):
            conv_output_shape(size, kernel, stride, padding, dilation)
    else:
        assert conv_output_shape(size, kernel, stride, padding, dilation) == expected


@SWEEP
@given(sizes, pairs, st.one_of(st.none(), pairs), st.tuples(st.integers(0, 2), st.integers(0, 2)), pairs, st.booleans())
def test_pool_output_shape_is_pytorchs(size, kernel, stride, padding, dilation, ceil_mode):
    x = torch.zeros(1, 1, *size)
    expected = _outcome(lambda: tuple(F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode).shape[-2:]))
    if expected == "refused":
        with pytest.raises(FeatvisError):
            pool_output_shape(size, kernel, stride, padding, dilation, ceil_mode)
    else:
        assert pool_output_shape(size, kernel, stride, padding, dilation, ceil_mode) == expected
        if dilation == (1, 1):
            assert tuple(F.avg_pool2d(x, kernel, stride, padding, ceil_mode).shape[-2:]) == expected


def test_ceil_mode_counts_like_googlenet():
    """GoogLeNet's 3x3 stride-2 ceil-mode pools: 112 -> 56 -> 28 -> 14 -> 7, where floor would give 55."""
    sizes = [112]
    for _ in range(4):
        sizes.append(pool_output_shape(sizes[-1], 3, 2, ceil_mode=True)[0])
    assert sizes == [112, 56, 28, 14, 7]
    assert pool_output_shape(112, 3, 2)[0] == 55 == F.max_pool2d(torch.zeros(1, 1, 112, 112), 3, 2).shape[-1]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), pairs, st.booleans())
def test_conv_param_count_is_pytorchs(in_per_group, out_per_group, groups, kernel, bias):
    conv = nn.Conv2d(in_per_group * groups, out_per_group * groups, kernel, groups=groups, bias=bias)
    expected = sum(p.numel() for p in conv.parameters())
    assert conv_param_count(in_per_group * groups, out_per_group * groups, kernel, groups=groups, bias=bias) == expected


def test_accepts_numpy_integers_and_names_bad_arguments():
    assert conv_output_shape((np.int64(7), np.int64(7)), np.int32(3)) == (5, 5)
    with pytest.raises(FeatvisError, match="pair"):
        conv_output_shape((7, 7, 7), 3)
    with pytest.raises(FeatvisError, match="stride"):
        conv_output_shape(7, 3, stride=0)
    with pytest.raises(FeatvisError, match="divisible"):
        conv_param_count(3, 4, 3, groups=2)
    with pytest.raises(FeatvisError, match="pair"):
        pool_output_shape(7, True)
