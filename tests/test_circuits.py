"""Expanded weights, top connections and weight families, checked against independent ground truth:
autograd Jacobians of networks whose nonlinearities were removed by hand, kernels composed by
explicit sums, planted connections, and scipy's hierarchical clustering."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import featvis
from featvis.circuits.families import average_linkage
from featvis import FeatvisError
from featvis.receptive_field import relative_field


def _without_nonlinearities(module: nn.Module) -> nn.Module:
    """A float64 copy with every nn.ReLU an identity and every nn.MaxPool2d an average pool of the same window."""
    module = copy.deepcopy(module).double()
    for name, child in list(module.named_children()):
        if isinstance(child, nn.ReLU):
            setattr(module, name, nn.Identity())
        elif isinstance(child, nn.MaxPool2d):
            setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode,
                                               count_include_pad=False))
        else:
            setattr(module, name, _without_nonlinearities(child))
    return module


def _unit_jacobian(block, channels: int, side: int) -> torch.Tensor:
    """d block(x)[0, :, c, c] / d x for the central unit c of a [1, channels, side, side] input: [C_out, C_in, side, side]."""
    x = torch.randn(1, channels, side, side, dtype=torch.float64)
    centre = (block(x).shape[-1] - 1) // 2
    return torch.autograd.functional.jacobian(lambda z: block(z)[0, :, centre, centre], x)[:, 0]


def test_inceptionv1_mixed3a_to_mixed3b_is_the_jacobian_of_the_linear_block_through_each_branch(inceptionv1):
    weights = featvis.expanded_weights(inceptionv1, "mixed3a", "mixed3b")
    assert weights.shape == (480, 256, 5, 5) and weights.dtype == torch.float64
    jacobian = _unit_jacobian(_without_nonlinearities(inceptionv1.net.inception3b).eval(), 256, 9)  # unit 4 sees 2..6
    assert jacobian[..., :2, :].abs().max() == 0 and jacobian[..., 7:, :].abs().max() == 0  # the field is 5x5
    branches = {"1x1": slice(0, 128), "3x3": slice(128, 320), "5x5": slice(320, 416), "pool": slice(416, 480)}
    for name, channels in branches.items():
        expected = jacobian[channels, :, 2:7, 2:7]
        assert torch.allclose(weights[channels], expected, rtol=1e-12, atol=1e-15), name
    assert weights[branches["5x5"], :, 0, 0].abs().max() > 0  # only the 5x5 branch reaches the corners
    assert weights[branches["3x3"], :, 0].abs().max() == 0 and weights[branches["pool"], :, 0].abs().max() == 0
    direct = inceptionv1.net.inception3b.branch1.conv.weight.double()[:, :, 0, 0]
    assert torch.equal(weights[:128, :, 2, 2], direct)  # adjacent layers: the conv's own weights


def _randomised_bn(net: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor in (module.weight.data, module.bias.data, module.running_mean):
                tensor.copy_(torch.randn(tensor.shape, generator=generator))
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return net.eval()


def test_resnet18_through_a_strided_block_with_its_downsampling_shortcut():
    torch.manual_seed(0)
    net = _randomised_bn(torchvision.models.resnet18())
    weights = featvis.expanded_weights(net, "layer1", "layer2.0")
    assert weights.shape == (128, 64, 7, 7)  # 3x3/2 then 3x3: 3 + 2 * 2 = 7
    block = _without_nonlinearities(net.layer2[0]).eval()
    jacobian = _unit_jacobian(block, 64, 15)  # central unit 3 of 8 reads rows 3..9
    assert jacobian[..., :3, :].abs().max() == 0 and jacobian[..., 10:, :].abs().max() == 0
    assert torch.allclose(weights, jacobian[:, :, 3:10, 3:10], rtol=1e-11, atol=1e-14)


def test_resnet18_only_paths_through_the_source_count():
    """From layer1.0.conv1 to layer1.0 the shortcut bypasses the source: the map is bn2 . conv2 . bn1 alone."""
    torch.manual_seed(1)
    net = _randomised_bn(torchvision.models.resnet18())
    block = copy.deepcopy(net.layer1[0]).double().eval()
    weights = featvis.expanded_weights(net, "layer1.0.conv1", "layer1.0")
    jacobian = _unit_jacobian(lambda z: block.bn2(block.conv2(block.bn1(z))), 64, 7)
    assert weights.shape == (64, 64, 3, 3)
    assert torch.allclose(weights, jacobian[:, :, 2:5, 2:5], rtol=1e-11, atol=1e-14)


class Planted(nn.Module):
    """conv1 (8 channels) -> ReLU -> 1x1 conv2 -> ReLU -> 3x3 conv3; channel 2 of conv3 reads only
    channel 5 of conv1, through channel 1 of conv2, with a known spatial map."""

    MAP = torch.tensor([[0.0, 1.0, -1.0], [0.0, 2.0, -2.0], [0.0, 1.0, -1.0]])

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 6, 1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(6, 4, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight[1] = 0
            self.conv2.weight[1, 5] = 0.5
            self.conv3.weight[2] = 0
            self.conv3.weight[2, 1] = self.MAP

    def forward(self, x):
        return self.conv3(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


def test_planted_connection_is_the_top_input_with_its_map():
    net = Planted()
    found = featvis.top_connections(net, "conv3:2", "conv1", k=3, target=None)
    top = found.inputs[0]
    assert (top.layer, top.channel) == ("conv1", 5)
    assert torch.allclose(top.map, 0.5 * Planted.MAP.double(), atol=1e-15)
    assert top.strength == pytest.approx(0.5 * float(Planted.MAP.double().norm()), rel=1e-12) and top.sum == pytest.approx(0.0, abs=1e-12)
    assert [c.strength for c in found.inputs[1:]] == [0.0, 0.0]  # nothing else reaches it
    outputs = featvis.top_connections(net, "conv2:1", "conv1", k=1, target="conv3").outputs
    assert (outputs[0].layer, outputs[0].channel) == ("conv3", 2) and torch.allclose(outputs[0].map, Planted.MAP.double())
    negative = featvis.top_connections(net, "conv3:2", "conv1", k=1, sign="negative").inputs[0]
    assert negative.channel == 5 and negative.strength == pytest.approx(0.5 * float(Planted.MAP.double().clamp(max=0).norm()))


def test_attribution_is_weight_times_activation_averaged_over_photos_and_positions():
    net = Planted()
    photos = [torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    found = featvis.top_connections(net, "conv3:0", "conv2", k=6, photos=photos)
    model = featvis.as_model(net)
    weights = featvis.expanded_weights(net, "conv2", "conv3")[0]  # [6, 3, 3]
    acts = torch.cat([featvis.capture(model, model.prepare(p), ["conv2"])["conv2"] for p in photos]).double()
    for connection in found.inputs:  # brute force: the channel's contribution at every unpadded unit, averaged
        s = connection.channel
        contribution = torch.nn.functional.conv2d(acts[:, s : s + 1], weights[s][None, None])
        assert connection.sum == pytest.approx(float(contribution.mean()), rel=1e-9, abs=1e-12)
    sums = [abs(c.sum) for c in found.inputs]
    assert sums == sorted(sums, reverse=True)


def _composed(outer: torch.Tensor, inner: torch.Tensor, stride: int) -> torch.Tensor:
    """The kernel of conv(outer) after conv(inner, stride), by explicit sums over both kernels."""
    t, j, ka, kb = outer.shape
    _, s, kc, kd = inner.shape
    size = (ka - 1) * stride + kc
    result = torch.zeros(t, s, size, (kb - 1) * stride + kd, dtype=torch.float64)
    for a in range(ka):
        for b in range(kb):
            for c in range(kc):
                for d in range(kd):
                    result[:, :, stride * a + c, stride * b + d] += outer[:, :, a, b].double() @ inner[:, :, c, d].double()
    return result


@pytest.mark.parametrize("stride", [1, 2])
def test_chains_equal_the_kernels_composed_by_hand(stride):
    torch.manual_seed(stride)
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Conv2d(5, 7, 1), nn.ReLU(),
                        nn.Conv2d(7, 4, 3, stride=stride, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
    one_by_one = featvis.expanded_weights(net, "0", "4")  # 1x1 -> 3x3
    assert torch.allclose(one_by_one, _composed(net[4].weight, net[2].weight, 1), atol=1e-14)
    three = featvis.expanded_weights(net, "4", "6")
    assert torch.equal(three, net[6].weight.double())
    chain = featvis.expanded_weights(net, "2", "6")  # 3x3 (stride s) -> 3x3: (3 - 1) * s + 3
    assert chain.shape[-1] == 2 * stride + 3
    assert torch.allclose(chain, _composed(net[6].weight, net[4].weight, stride), atol=1e-14)


def test_max_pool_is_taken_as_the_average_over_its_window():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 5, 1))
    weights = featvis.expanded_weights(net, "0", "2")
    assert weights.shape == (5, 4, 2, 2)
    expected = net[2].weight.double()[:, :, :1, :1].expand(-1, -1, 2, 2) / 4
    assert torch.allclose(weights, expected, atol=1e-15)


@pytest.mark.parametrize("source, target, message", [
    ("conv3", "conv1", "not downstream"),
    ("conv2", "conv2", "same layer"),
])
def test_bad_layer_pairs_are_refused_in_one_line(source, target, message):
    with pytest.raises(FeatvisError, match=message) as info:
        featvis.expanded_weights(Planted(), source, target)
    assert "\n" not in str(info.value)


def test_relative_field_of_mixed4a_on_mixed3a_by_hand():
    """mixed3b's 5x5 branch (5 units), maxpool3 3x3/2 (5 + 2 = 7), mixed4a's 5x5 at stride 2 (7 + 4 * 2 = 15)."""
    model = featvis.load_model("inceptionv1", pretrained=False)
    field = relative_field(model, "mixed3a", "mixed4a")
    assert (field.size, field.stride, field.input_size, field.output_shape) == ((15, 15), (2, 2), (28, 28), (512, 14, 14))


def test_layers_after_global_pooling_are_refused():
    net = torchvision.models.resnet18()
    with pytest.raises(FeatvisError, match="'avgpool' has no spatial positions"):
        featvis.expanded_weights(net, "layer4", "avgpool")


def test_weight_families_recover_planted_rotated_copies_and_agree_with_scipy():
    """Twelve channels in three families (a kernel and its 90-degree rotations differ in direction,
    so each family is one kernel at several scales plus a little noise)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 12, 3))
    bases = [torch.randn(4, 3, 3) for _ in range(3)]
    bases = [bases[0], torch.rot90(bases[0], 1, (1, 2)), torch.rot90(bases[0], 2, (1, 2))]
    family = [i % 3 for i in range(12)]
    with torch.no_grad():
        for c in range(12):
            net[2].weight[c] = bases[family[c]] * (1 + c / 6) + 0.01 * torch.randn(4, 3, 3)
    result = featvis.weight_similarity(net, "2", "0", clusters=3)
    groups = sorted(sorted(g) for g in result.families())
    assert groups == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    distance = (1 - result.similarity).clamp_min(0).numpy()
    np.fill_diagonal(distance, 0)
    tree = linkage(squareform(distance, checks=False), method="average")
    theirs = fcluster(tree, 3, criterion="maxclust")
    assert len({(a, b) for a, b in zip(result.labels, theirs)}) == 3  # the same partition
    order, labels = average_linkage(distance, 5)
    assert sorted(order) == list(range(12))
    expected = fcluster(tree, 5, criterion="maxclust")
    assert len({(a, b) for a, b in zip(labels, expected)}) == len(set(expected)) == len(set(labels))


def test_attribution_of_a_strided_padded_layer_averages_the_units_that_read_no_padding():
    """conv 3x3 / stride 2 / padding 1: unit y reads rows 2y-1 .. 2y+1, so rows from 1 on, in steps of 2."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3, stride=2, padding=1))
    photos = [torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(10 + i)) for i in range(2)]
    found = featvis.top_connections(net, "2:3", "0", k=4, photos=photos)
    model = featvis.as_model(net)
    acts = torch.cat([featvis.capture(model, model.prepare(p), ["0"])["0"] for p in photos]).double()
    kernel = net[2].weight.detach().double()[3]
    height = acts.shape[-1]
    inside = [y for y in range(height) if 2 * y - 1 >= 0 and 2 * y + 1 < height]
    for connection in found.inputs:
        s = connection.channel
        values = [float((acts[n, s, 2 * y - 1 : 2 * y + 2, 2 * x - 1 : 2 * x + 2] * kernel[s]).sum())
                  for n in range(len(photos)) for y in inside for x in inside]
        assert connection.sum == pytest.approx(sum(values) / len(values), rel=1e-9, abs=1e-12)
