"""Receptive-field theory against a measurement: the gradient support of units.

The measurement: copy the network, make every weight a positive constant (biases zero), swap max
pools for average pools over exactly the same windows, run in float64 on a constant positive
image, and back-propagate from one unit. With nothing negative anywhere no gradient can cancel,
so the pixels with a nonzero gradient are exactly the pixels the unit depends on. Their bounding
box must equal the theory's exact box (``visible``) for every unit measured, and for centre units
also the formula's box ``region(unit)`` = ``[S*i - P, S*i - P + r)``, which pins r, S and P down.

Units: the centre unit, on the smallest input (from a ladder of sizes ~1.2x apart) that holds its
whole field with a pixel to spare on every side, and the last (bottom-right) unit, whose field
hangs over the image's far edges (ceil-mode windows, pixels no window reads, clipping), on the
smallest input where its field starts inside the image. One sample per unit: one backward
measures all units of a size at once.

Cost: convolutions keep their geometry (kernel, stride, padding, dilation) but are collapsed to
one channel (the mean of the input channels): with positive weights every output channel of a
convolution depends on the same pixels, so the support is unchanged (test
``test_one_channel_measurement_equals_full_width`` measures real layers both ways), and every
layer of GoogLeNet is measured in seconds instead of many minutes.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import featvis
from featvis.models import InceptionV1
from featvis.models.inceptionv1 import LUCID_ALIASES
from featvis.receptive_field import GLOBAL, POINTWISE, Box, Window, receptive_field, receptive_fields, register_rule


pytestmark = pytest.mark.usefixtures("one_thread")


# --- the measurement ----------------------------------------------------------------------------
class _WindowMean(nn.Module):
    """The mean over exactly the windows of a max pool (dilation and ceil_mode included)."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = self.pool
        kernel, stride = nn.modules.utils._pair(pool.kernel_size), nn.modules.utils._pair(pool.stride or pool.kernel_size)
        padding, dilation = nn.modules.utils._pair(pool.padding), nn.modules.utils._pair(pool.dilation)
        out = pool(torch.empty(x.shape, device="meta")).shape[-2:]
        reach = [(o - 1) * s + d * (k - 1) + 1 - (n + p) for o, s, d, k, n, p in zip(out, stride, dilation, kernel, x.shape[-2:], padding)]
        x = F.pad(x, (padding[1], max(reach[1], 0), padding[0], max(reach[0], 0)))
        weight = torch.full((x.shape[1], 1, *kernel), 1.0 / math.prod(kernel), dtype=x.dtype)
        return F.conv2d(x, weight, stride=stride, dilation=dilation, groups=x.shape[1])[..., : out[0], : out[1]]


class _OneChannelConv(nn.Module):
    """A convolution's geometry on the mean of its input channels, with one output channel."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False,
                              padding_mode=conv.padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.mean(1, keepdim=True))


class _Total(nn.Module):
    """A linear layer collapsed to one output: every input feature counts."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(-1, keepdim=True)


def _replace(net: nn.Module, swap) -> None:
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            new = swap(child)
            if new is not None:
                setattr(module, name, new)


def support_net(net: nn.Module, one_channel: bool = True) -> featvis.FeatvisModel:
    """The measuring copy: positive constant weights, zero biases, mean pools (max pools and adaptive max pools
    swapped for means over the same windows), float64, identity input scaling."""
    net = copy.deepcopy(net).eval()
    if one_channel:
        _replace(net, lambda m: _OneChannelConv(m) if isinstance(m, nn.Conv2d) else _Total() if isinstance(m, nn.Linear)
                 else nn.Identity() if isinstance(m, nn.BatchNorm2d) else None)
    _replace(net, lambda m: (nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode) if m.dilation in (1, (1, 1))
                             else _WindowMean(m)) if isinstance(m, nn.MaxPool2d)
             else nn.AdaptiveAvgPool2d(m.output_size) if isinstance(m, nn.AdaptiveMaxPool2d) else None)
    net = net.double()
    with torch.no_grad():
        for name, param in net.named_parameters():
            param.fill_(1.0 / param[0].numel() if param.dim() > 1 else float(name.endswith("weight")))
    return featvis.as_model(net, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def measured_boxes(model: featvis.FeatvisModel, requests: list[tuple[str, tuple[int, int]]], size: tuple[int, int],
                   value: float = 1e-3, chunk: int = 4) -> list[Box]:
    """Bounding box of the input pixels each ``(layer, unit)`` depends on (one sample and backward per unit)."""
    boxes: list[Box] = []
    paths = list(dict.fromkeys(path for path, _ in requests))
    with featvis.Probe(model, paths, early_exit=True, detach=False) as probe:
        for start in range(0, len(requests), chunk):
            part = requests[start : start + chunk]
            x = torch.full((len(part), 3, *size), value, dtype=torch.float64, requires_grad=True)
            acts = probe(x)
            total = sum(_unit(acts[path][b], unit) for b, (path, unit) in enumerate(part))
            (grad,) = torch.autograd.grad(total, x)
            boxes += [support_box(sample) for sample in grad.abs().sum(1)]
    return boxes


def support_box(values: torch.Tensor) -> Box:
    """Bounding box of the nonzero entries of a 2-D map (empty box when there are none)."""
    rows, cols = values.sum(1).nonzero().flatten(), values.sum(0).nonzero().flatten()
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1) if len(rows) else Box(0, 0, 0, 0)


def _unit(act: torch.Tensor, unit: tuple[int, int]) -> torch.Tensor:
    return act[:, unit[0], unit[1]].sum() if act.dim() == 3 else act.sum()


def same_outputs(model: featvis.FeatvisModel, paths: list[str], size: tuple[int, int]) -> dict[str, str]:
    """Each path -> the first path with the very same output tensor (a Sequential's output is its last
    child's): such layers are measured once."""
    with featvis.Probe(model, paths, detach=False) as probe, torch.no_grad():
        acts = probe(torch.full((1, 3, *size), 1e-3, dtype=torch.float64))
    first: dict[int, str] = {}
    return {path: first.setdefault(id(acts[path]), path) for path in paths}


def _inside(box: Box, size: tuple[int, int]) -> bool:
    """The box lies in the image with at least one pixel to spare on every side."""
    return box.y0 >= 1 and box.x0 >= 1 and box.y1 <= size[0] - 1 and box.x1 <= size[1] - 1


#: Input sides tried, about 1.2x apart: few theory runs, inputs at most ~20% larger than needed.
LADDER = sorted({8 * round(16 * 1.2**k / 8) for k in range(25)})


Job = tuple[str, tuple[int, int], featvis.ReceptiveField]  # layer, unit, theoretical field


def plan(theory: featvis.FeatvisModel, paths: list[str], aspect: tuple[int, int] = (1, 1)) -> dict[tuple[int, int], list[Job]]:
    """Input size -> ``(layer, unit, theoretical field)`` to measure there: each layer's centre unit on the
    smallest input that holds its whole field (a pixel to spare on every side), and its last unit on the
    smallest input where that unit's field starts inside the image (it hangs over the far edges)."""
    cache: dict[int, dict[str, featvis.ReceptiveField]] = {}
    sides = sorted(set(LADDER) | {theory.input_size})

    def at(n: int) -> dict[str, featvis.ReceptiveField]:
        if n not in cache:
            try:
                fields = receptive_fields(theory, paths, input_size=(n * aspect[0], n * aspect[1]))
            except featvis.FeatvisError:  # too small for the model
                fields = []
            cache[n] = {rf.layer: rf for rf in fields if not rf.unanalysed}
        return cache[n]

    def centre(rf: featvis.ReceptiveField) -> tuple[int, int] | None:
        return rf.central_unit() if rf.stride == (0, 0) or _inside(rf.region(rf.central_unit()), rf.input_size) else None

    def last(rf: featvis.ReceptiveField) -> tuple[int, int] | None:
        unit = (rf.output_shape[1] - 1, rf.output_shape[2] - 1)
        box = rf.region(unit)
        return unit if rf.stride != (0, 0) and min(box.y0, box.x0) >= 1 else None

    reference = at(theory.input_size)
    jobs: dict[tuple[int, int], list] = defaultdict(list)
    for path in paths:
        rf = reference[path]
        for pick in (centre, last) if rf.stride != (0, 0) else (centre,):
            need = max(rf.size[0] / aspect[0], rf.size[1] / aspect[1]) + 2 if pick is centre and rf.stride != (0, 0) else 0
            found = next((at(n)[path] for n in sides if n >= need and path in at(n) and pick(at(n)[path])), None)
            assert found is not None, f"no input up to {sides[-1]} px shows the field of {path}"
            jobs[found.input_size].append((path, pick(found), found))
    return jobs


def check_against_measurement(net: nn.Module, paths: list[str] | None = None, *, aspect: tuple[int, int] = (1, 1),
                              value: float = 1e-3, one_channel: bool = True) -> int:
    """Theory (on ``net`` itself) == measurement (on its measuring copy) at the centre and last unit of every
    layer (one unit where all units see the same), measured once per distinct output tensor; returns how many
    (layer, unit) pairs agreed.

    Every unit: the measured box is ``visible`` (exact, borders included). Centre units: it is also the
    formula's box (``region``), whole, which pins r, S and P down."""
    theory = featvis.as_model(net)
    measuring = support_net(net, one_channel)
    paths = paths or [rf.path for rf in receptive_fields(theory)]
    jobs = plan(theory, paths, aspect)
    same = same_outputs(measuring, paths, min(jobs))
    checked = 0
    for size, units in sorted(jobs.items()):
        measure = [(path, unit) for path, unit, _ in units if same[path] == path]
        measured = dict(zip(measure, measured_boxes(measuring, measure, size, value)))
        for path, unit, rf in units:
            where = f"{path} unit {unit} on {size[0]}x{size[1]}"
            box = measured.get((same[path], unit))  # a layer sharing its output tensor must share the theory too
            assert box == rf.visible(unit), f"{where}: theory {rf.visible(unit)}, measured {box}"
            if unit != (rf.output_shape[1] - 1, rf.output_shape[2] - 1) or rf.stride == (0, 0):
                assert box == rf.region(unit).clip(*size), f"{where}: formula {rf.region(unit)}, measured {box}"
            checked += 1
    return checked


# --- every layer of real networks ---------------------------------------------------------------
def test_inceptionv1_every_layer_matches_measurement():
    net = InceptionV1()  # the support does not depend on the weights
    fields = receptive_fields(featvis.as_model(net))
    assert len(fields) == len(list(net.named_modules())) - 1  # every module runs and is analysed
    assert check_against_measurement(net) == sum(1 if rf.stride == (0, 0) else 2 for rf in fields)  # every layer


@pytest.mark.parametrize("name, build, value", [
    ("googlenet", lambda: torchvision.models.googlenet(weights=None, init_weights=False, transform_input=True), 1.0),
    ("resnet18", lambda: torchvision.models.resnet18(), 1e-3),
    ("alexnet", lambda: torchvision.models.alexnet(), 1e-3),
    ("mobilenet_v2", lambda: torchvision.models.mobilenet_v2(), 1e-3),  # ReLU6: small values stay below the cap
    ("squeezenet1_1", lambda: torchvision.models.squeezenet1_1(), 1e-3),
])
def test_torchvision_every_layer_matches_measurement(name, build, value):
    # googlenet's input transform subtracts an offset: a bright image keeps every value positive
    assert check_against_measurement(build(), value=value) > 20


def test_one_channel_measurement_equals_full_width():
    """Collapsing channels (what makes the measurement cheap) leaves every support unchanged: full-width
    measuring copies (grouped, depthwise, batch-normed, concatenated, residual) agree with the theory too."""
    assert check_against_measurement(InceptionV1(), ["conv1.conv", "maxpool1", "conv3", "inception3a.branch3", "inception3a",
                                                    "maxpool3"], one_channel=False) == 12
    assert check_against_measurement(torchvision.models.resnet18(), ["layer1.0", "layer2.0.downsample", "layer2.0"],
                                     one_channel=False) == 6
    assert check_against_measurement(torchvision.models.mobilenet_v2(), ["features.2.conv.1", "features.3"], one_channel=False) == 4


def test_known_values_from_the_literature():
    """Araujo et al. (2019), table of common networks: AlexNet r=195, VGG-16 r=212 (S=32, P=90)."""
    alexnet = receptive_field(torchvision.models.alexnet(), "features.12")
    assert (alexnet.size, alexnet.stride) == ((195, 195), (32, 32))
    with torch.device("meta"):  # the theory needs no weights: build the 138M-parameter net without memory
        vgg16 = torchvision.models.vgg16()
    vgg = receptive_field(vgg16, "features.30")
    assert (vgg.size, vgg.stride, vgg.padding, vgg.aligned) == ((212, 212), (32, 32), (90, 90), True)
    inception = receptive_fields(featvis.as_model(InceptionV1()), ["conv1", "maxpool1", "conv3", "inception3a"])
    assert [rf.size[0] for rf in inception] == [7, 11, 19, 59]  # 7x7/2, 3x3/2 pool, 3x3 (at stride 4), 5x5 (at stride 8)


# --- hand-made nets -----------------------------------------------------------------------------
class _Crop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, 1:, 2::2]


class _Branches(nn.Module):
    """Two paths added: a strided 3x3 and a strided 1x1 (ResNet's shortcut), then concatenated with a pool path."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(channels, channels, 3, padding=1))
        self.shortcut = nn.Conv2d(channels, channels, 1, stride=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.main(x) + self.shortcut(x), self.pool(x)], dim=1)


def dilated_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, dilation=2, padding=2), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, dilation=3, padding=1),
        nn.MaxPool2d(3, stride=2, dilation=2, ceil_mode=True),
        nn.Conv2d(4, 4, (3, 1), dilation=(1, 4)),
        _Branches(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    )


def non_square_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, (3, 7), stride=(1, 2), padding=(1, 0)), nn.ReLU(),
        nn.MaxPool2d((2, 3), stride=(2, 1), padding=(1, 1), ceil_mode=True),
        nn.Conv2d(4, 4, (5, 2), stride=(2, 3), padding=(0, 1), dilation=(1, 2)),
        nn.Conv2d(4, 4, (4, 2), padding="same"),  # even kernels: one more pixel of padding after than before
        nn.AvgPool2d((3, 2), stride=(1, 2), padding=(1, 0), ceil_mode=True, count_include_pad=False),
        nn.Conv2d(4, 4, 3, padding=2, padding_mode="reflect"),
        nn.ZeroPad2d((2, 0, 1, 3)), _Crop(), nn.BatchNorm2d(4),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("build, aspect", [(dilated_net, (1, 1)), (non_square_net, (3, 5)), (non_square_net, (4, 3))])
def test_hand_made_nets_every_layer_match_measurement(build, aspect):
    torch.manual_seed(0)
    net = build()
    fields = receptive_fields(featvis.as_model(net), input_size=(48 * aspect[0], 48 * aspect[1]))
    assert all(not rf.unanalysed for rf in fields)
    assert check_against_measurement(net, aspect=aspect, one_channel=False) >= len(fields)


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_non_square_axes_are_independent():
    fields = {rf.layer: rf for rf in receptive_fields(non_square_net(), input_size=(90, 150))}
    assert fields["0"].size == (3, 7) and fields["0"].stride == (1, 2) and fields["0"].padding == (1, 0)
    assert fields["4"].padding[0] - fields["3"].padding[0] == fields["3"].stride[0] * 1  # 'same', kernel 4: 1 before, 2 after
    assert fields["12"].stride == (0, 0) and fields["12"].output_shape == (3, 1, 1)


def test_adaptive_pool_with_uneven_windows_is_exact_per_unit():
    """11 rows pooled to 3 (windows of 4, 5 and 4 rows, overlapping): no single (r, S, P), but each unit's
    pixels are known exactly, and the classifier after it sees everything."""
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.AdaptiveAvgPool2d((3, 4)), nn.Flatten(), nn.Linear(24, 2))
    fields = {rf.layer: rf for rf in receptive_fields(net, input_size=(11, 13))}
    pool = fields["1"]
    assert pool.size is None and "windows of different sizes" in pool.unanalysed[0]
    assert fields["3"].is_global and fields["3"].size == (11, 13)
    units = [(y, x) for y in range(3) for x in range(4)]
    assert measured_boxes(support_net(net, one_channel=False), [("1", u) for u in units], (11, 13)) == [pool.visible(u) for u in units]
    alexnet = receptive_fields(torchvision.models.alexnet(), ["avgpool", "classifier.6"], input_size=256)  # 7x7 -> 6x6
    assert alexnet[0].unanalysed and alexnet[1].is_global


# --- alignment -----------------------------------------------------------------------------------
class _TwoPaths(nn.Module):
    """Adds a padded 3x3 path (centred on its unit) to an unpadded 3x3 path shifted by zero padding at the end:
    both maps have the same size, but the second path's fields sit one pixel further down and right."""

    def __init__(self):
        super().__init__()
        self.centred = nn.Conv2d(3, 2, 3, padding=1)
        self.shifted = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ZeroPad2d((0, 2, 0, 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.centred(x) + self.shifted(x)


def test_misaligned_graph_is_reported_with_its_exact_extent():
    net = nn.Sequential(_TwoPaths(), nn.Conv2d(2, 2, 3, stride=2))
    fields = {rf.layer: rf for rf in receptive_fields(net, input_size=40)}
    assert fields["0.centred"].aligned and fields["0.shifted"].aligned
    assert not fields["0"].aligned and not fields["1"].aligned  # misalignment propagates
    assert fields["0.centred"].size == fields["0.shifted"].size == (3, 3)
    assert fields["0"].size == (4, 4) and fields["0"].padding == (1, 1)  # the union of both paths, not the max of r
    assert check_against_measurement(net, one_channel=False) >= 6


class _DifferentStrides(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return F.avg_pool2d(x, 2) + x[..., :half, :half]


def test_merging_different_strides_is_named_not_guessed():
    rf = receptive_field(nn.Sequential(_DifferentStrides(), nn.Conv2d(3, 2, 1)), "1", input_size=32)
    assert rf.size is None and not rf.aligned and "different strides" in rf.unanalysed[0]
    with pytest.raises(featvis.FeatvisError, match="unknown.*register_rule"):
        rf.region((0, 0))


# --- the lecture's question ----------------------------------------------------------------------
def test_stacked_3x3_convolutions_see_a_100px_dog_after_50_layers():
    """r = 2n + 1: 49 layers see 99 px, 50 layers 101 px; measured on the 50-layer stack."""
    def stack(n: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 1, 3, padding=1), *(nn.Conv2d(1, 1, 3, padding=1) for _ in range(n - 1)))

    sizes = {n: receptive_field(stack(n), str(n - 1), input_size=128).size for n in (1, 2, 49, 50)}
    assert sizes == {1: (3, 3), 2: (5, 5), 49: (99, 99), 50: (101, 101)}
    assert min(n for n in range(1, 100) if 2 * n + 1 >= 100) == 50
    assert check_against_measurement(stack(50), ["49"], one_channel=False) == 2


# --- units seeing a pixel, by forward measurement -------------------------------------------------
def test_units_seeing_a_pixel_match_a_forward_measurement():
    """A single bright pixel on a black image lights up exactly the units that see it (every layer, borders too)."""
    net = InceptionV1()
    theory, measuring = featvis.as_model(net), support_net(net)
    size = 160
    pixels = [(0, 0), (size - 1, size - 1), (80, 80), (3, 150)]
    fields = receptive_fields(theory, input_size=size)
    x = torch.zeros(len(pixels), 3, size, size, dtype=torch.float64)
    for b, (y, x_) in enumerate(pixels):
        x[b, :, y, x_] = 1.0
    with featvis.Probe(measuring, [rf.path for rf in fields]) as probe, torch.no_grad():
        acts = probe(x)
    for rf in fields:
        for b, pixel in enumerate(pixels):
            lit = acts[rf.path][b].reshape(-1, rf.output_shape[1], rf.output_shape[2]).abs().sum(0)
            assert rf.units_seeing(pixel) == support_box(lit), (rf.path, pixel)


def architecture() -> featvis.FeatvisModel:
    """GoogLeNet without weights (the theory needs none), with its Lucid layer names."""
    return featvis.FeatvisModel(InceptionV1(), name="inceptionv1", aliases=LUCID_ALIASES)


# --- the API --------------------------------------------------------------------------------------
def test_region_box_and_clip():
    rf = receptive_field(architecture(), "mixed4a")
    assert rf.layer == "mixed4a" and rf.path == "inception4a" and rf.output_shape == (512, 14, 14)
    box = rf.region((0, 0))
    assert box == Box(-71, -71, 100, 100) and (box.height, box.width) == (171, 171)
    assert box.clip(224, 224) == Box(0, 0, 100, 100) == rf.visible((0, 0))
    assert rf.center((0, 0)) == rf.center0 == box.center == (14.0, 14.0)
    assert rf.central_unit() == (6, 6) and rf.center((6, 6)) == (110.0, 110.0)  # nearest the middle, 111.5
    assert rf.center((13, 2)) == (14.0 + 13 * 16, 14.0 + 2 * 16)
    assert Box(5, 5, 9, 9).clip(4, 4) == Box(4, 4, 4, 4)  # entirely outside: empty
    with pytest.raises(featvis.FeatvisError, match=r"unit \(14, 0\) is outside.*14x14"):
        rf.region((14, 0))
    assert rf.region((20, 0), image_hw=(400, 400)) == Box(20 * 16 - 71, -71, 20 * 16 + 100, 100)  # a larger photo
    fc = receptive_field(featvis.as_model(InceptionV1()), "fc")
    assert fc.is_global and fc.output_shape == (1000, 1, 1) and fc.region((0, 0)) == Box(0, 0, 224, 224)
    assert fc.region((0, 0), image_hw=(300, 500)) == Box(0, 0, 300, 500)


def test_names_as_given_in_order_and_errors():
    model = architecture()
    fields = receptive_fields(model, ["mixed4a", "conv2d0", "inception4a"])
    assert [rf.layer for rf in fields] == ["mixed4a", "conv2d0", "inception4a"]
    assert fields[0].size == fields[2].size and fields[0].path == fields[2].path
    with pytest.raises(featvis.FeatvisError, match="unknown layer 'mixed4z'.*closest"):
        receptive_fields(model, ["mixed4z"])
    with pytest.raises(featvis.FeatvisError, match=r"cannot run on a 8x8 input.*larger input size"):
        receptive_fields(model, input_size=8)
    googlenet = torchvision.models.googlenet(weights=None, init_weights=False)
    with pytest.raises(featvis.FeatvisError, match="aux1 did not run"):
        receptive_fields(googlenet, ["aux1"])
    assert receptive_field(model, "conv1", input_size=(100, 60)).output_shape == (64, 50, 30)


def test_to_dict_has_the_cli_fields():
    fields = receptive_field(architecture(), "mixed3a").to_dict()
    assert {k: fields[k] for k in ("layer", "size", "stride", "padding", "aligned", "output_shape")} == {
        "layer": "mixed3a", "size": [59, 59], "stride": [8, 8], "padding": [23, 23], "aligned": True, "output_shape": [256, 28, 28]}


def test_training_mode_is_kept_and_grads_untouched():
    net = torchvision.models.resnet18().train()
    receptive_fields(net, ["layer1"])
    assert all(m.training for m in net.modules()) and all(p.grad is None for p in net.parameters())


# --- what featvis cannot analyse, and user rules ----------------------------------------------------
class _Upsample(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2)


class _UnfoldPool(nn.Module):
    """A 3x3, stride-2, padding-1 mean pool written with F.unfold (featvis has no rule for unfold)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        cols = F.unfold(x, 3, padding=1, stride=2).view(n, c, 9, -1).mean(2)
        return cols.view(n, c, (h - 1) // 2 + 1, (w - 1) // 2 + 1)


def test_unknown_operations_are_named_with_their_module():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Sequential(_Upsample()), nn.Conv2d(2, 2, 3))
    fields = {rf.layer: rf for rf in receptive_fields(net, input_size=32)}
    assert not fields["0"].unanalysed
    assert fields["2"].unanalysed == ("1.0 (interpolate)",) and fields["2"].size is None and not fields["2"].aligned
    assert fields["2"].to_dict()["unanalysed"] == ["1.0 (interpolate)"]


def test_registered_rule_makes_a_custom_layer_exact():
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), _UnfoldPool(), nn.Conv2d(2, 2, 3))
    assert receptive_field(net, "2", input_size=33).unanalysed
    register_rule(_UnfoldPool, lambda module: Window(kernel=3, stride=2, padding=1))
    try:
        rf = receptive_field(net, "2", input_size=33)
        assert (rf.size, rf.stride, rf.padding) == ((9, 9), (2, 2), (2, 2))  # 3 + 2*1 (pool) + 2*2 (conv at stride 2)
        assert check_against_measurement(net, one_channel=False) >= 4
        register_rule(_UnfoldPool, lambda module: GLOBAL)
        assert receptive_field(net, "2", input_size=33).is_global
        register_rule(_UnfoldPool, lambda module: POINTWISE)
        assert receptive_field(net, "2", input_size=33).size == (5, 5)
    finally:
        register_rule(_UnfoldPool, None)
    with pytest.raises(featvis.FeatvisError, match="nn.Module subclass"):
        register_rule(int, lambda module: POINTWISE)


def test_a_concat_layer_sees_the_union_of_its_parts():
    """A concat layer of two branches (3x3 and 5x5 convolutions, stride 2 after a shared stem): each unit's
    field is the box of input pixels any of its channels depends on, measured by the support of autograd's
    gradient of all its channels at one unit; channels add up."""
    from collections import OrderedDict

    torch.manual_seed(0)

    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.a = nn.Conv2d(4, 5, 3, padding=1)
            self.b = nn.Conv2d(4, 6, 5, padding=2)

        def forward(self, x):
            s = self.stem(x)
            return torch.cat([self.a(s), self.b(s)], 1)

    net = Branches()
    model = featvis.FeatvisModel(net, input_size=40, concats=OrderedDict(both=("a", "b")))
    (field,) = featvis.receptive_fields(model, ["both"])
    assert field.output_shape == (11, 20, 20)
    x = torch.zeros(1, 3, 40, 40, requires_grad=True)
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.constant_(module.weight, 1.0)
    net(x)[0, :, 10, 10].sum().backward()
    rows = x.grad[0].abs().sum((0, 2)).nonzero().flatten()
    cols = x.grad[0].abs().sum((0, 1)).nonzero().flatten()
    box = field.region((10, 10))
    assert (box.y0, box.y1, box.x0, box.x1) == (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    assert field.size == (11, 11) and field.stride == (2, 2)
