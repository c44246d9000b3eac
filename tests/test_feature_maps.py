"""Feature maps: channel selection, and units placed on the photo at their true input positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

import featvis
from featvis import FeatvisError
from featvis.core.probe import spatial_layers
from featvis.inspect.feature_maps import (
    feature_map_grid,
    feature_map_overlay,
    feature_maps,
    to_input_space,
    top_channels,
)


def _small_cnn() -> featvis.FeatvisModel:
    """conv 5x5 stride 2 (no padding) then max-pool 3x3 stride 2: pool unit j sees pixels 4j..4j+8."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2), nn.ReLU(), nn.MaxPool2d(3, stride=2))
    return featvis.as_model(net, input_size=64).freeze()


def test_units_land_on_their_receptive_field_centres():
    model = _small_cnn()
    values = torch.arange(14 * 14, dtype=torch.float32).view(14, 14)
    placed = to_input_space(model, "2", values, (64, 64))
    # By hand from the architecture: conv unit i is centred on pixel 2i + 2, pool unit j on conv unit 2j + 1.
    centres = 4 * torch.arange(14) + 4
    torch.testing.assert_close(placed[centres][:, centres], values)
    # halfway between two centres: the mean of the two units; beyond the last centre: the edge unit
    torch.testing.assert_close(placed[6, 4], (values[0, 0] + values[1, 0]) / 2)
    torch.testing.assert_close(placed[63, 63], values[13, 13])
    torch.testing.assert_close(placed[0, 0], values[0, 0])
    # a naive stretch of the 14x14 map over 64 pixels puts the units elsewhere
    naive = F.interpolate(values[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    assert not torch.allclose(naive[centres][:, centres], values)


@pytest.mark.parametrize("layer, unit", [("mixed3a", (14, 14)), ("mixed4a", (5, 5))])
def test_overlay_position_matches_the_gradient_support(inceptionv1, coffee, layer, unit):
    """Ground truth by autograd: the input pixels a unit depends on; their box's middle is its centre."""
    x = inceptionv1.prepare(coffee).requires_grad_(True)
    act = featvis.capture(inceptionv1, x, [layer], detach=False)[layer]
    (grad,) = torch.autograd.grad(act[0, :, unit[0], unit[1]].sum(), x)
    support = grad.abs().sum(dim=(0, 1)) > 0
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    assert rows.min() > 0 and cols.max() < 223  # an interior unit: its field is not clipped
    middle = ((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)
    one_hot = torch.zeros(act.shape[-2:])
    one_hot[unit] = 1.0
    placed = to_input_space(inceptionv1, layer, one_hot, (224, 224))
    peak = divmod(int(placed.argmax()), 224)
    assert peak == (int(middle[0]), int(middle[1]))
    naive = F.interpolate(one_hot[None, None], size=(224, 224), mode="bilinear", align_corners=False)[0, 0]
    naive_peak = divmod(int(naive.argmax()), 224)
    assert abs(naive_peak[0] - middle[0]) >= 2  # what a plain resize would get wrong


def test_feature_maps_and_top_channels(inceptionv1, coffee):
    x, maps = feature_maps(inceptionv1, "mixed4a", coffee)
    assert x.shape == (1, 3, 224, 224) and maps.shape == (512, 14, 14)
    direct = inceptionv1.net.inception4a
    with torch.no_grad():
        stem = inceptionv1.net
        h = stem.maxpool1(stem.conv1(inceptionv1.normalize(x)))
        h = stem.maxpool2(stem.lrn2(stem.conv3(stem.conv2(stem.lrn1(h)))))
        expected = direct(stem.maxpool3(stem.inception3b(stem.inception3a(h))))[0]
    torch.testing.assert_close(maps, expected)
    means = maps.mean(dim=(1, 2)).numpy()
    assert top_channels(maps, 5) == list(np.argsort(-means)[:5])
    with pytest.raises(FeatvisError, match="not channel maps"):
        feature_maps(inceptionv1, "fc", coffee)


def test_spatial_layers_in_execution_order(inceptionv1):
    layers = spatial_layers(inceptionv1, torch.zeros(1, 3, 224, 224))
    assert layers[-1] == "inception5b" and "avgpool" not in layers and "fc" not in layers
    assert layers.index("conv1") < layers.index("inception3a") < layers.index("inception4e")


def test_grid_shows_chosen_channels_on_one_scale(inceptionv1, coffee):
    fig = feature_map_grid(inceptionv1, "mixed4a", coffee, channels=[1, 5, 9])
    assert isinstance(fig, Figure)
    panels = [ax for ax in fig.axes if ax.images and ax.get_title().startswith("ch ")]
    assert [ax.get_title().split()[1] for ax in panels] == ["1", "5", "9"]
    _, maps = feature_maps(inceptionv1, "mixed4a", coffee)
    np.testing.assert_allclose(np.asarray(panels[1].images[0].get_array()), maps[5].numpy())
    assert len({ax.images[0].get_clim() for ax in panels}) == 1  # one shared colour scale
    with pytest.raises(FeatvisError, match="channel 512 is out of range"):
        feature_map_grid(inceptionv1, "mixed4a", coffee, channels=[512])


def test_overlay_outlines_the_most_active_units_field(inceptionv1, coffee):
    fig = feature_map_overlay(inceptionv1, "mixed3a", coffee, 3)
    _, maps = feature_maps(inceptionv1, "mixed3a", coffee)
    y, x = divmod(int(maps[3].argmax()), 28)
    (box,) = [p for p in fig.axes[0].patches if isinstance(p, Rectangle)]
    # unit (y, x) of mixed3a sees pixels 8*y - 23 .. 8*y + 35 (59 px, stride 8; cf. the gradient test)
    x0, y0 = box.get_xy()
    assert (y0 + 0.5, x0 + 0.5) == (max(0, 8 * y - 23), max(0, 8 * x - 23))
    assert y0 + 0.5 + box.get_height() == min(224, 8 * y + 36)
