"""CNNs written the ways users write them: flattening by ``x.view``, ``reshape`` or ``nn.Flatten``,
functional ReLUs, small inputs. featvis's speed tricks (channels-last activations) must never change
what the user's code sees: a model whose own ``view`` refuses channels-last tensors takes the plain
path, and every answer is checked against the plain PyTorch forward pass of the user's module.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import featvis
from featvis.optvis import precision
from featvis.optvis.transforms import resize


class Digits(nn.Module):
    """An MNIST-tutorial CNN for 28 px inputs; ``flatten`` is how its forward flattens."""

    def __init__(self, flatten: str):
        super().__init__()
        self.flatten = flatten
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(8, 16, 3)
        self.pool = nn.MaxPool2d(2)
        self.to_flat = nn.Flatten()
        self.fc = nn.Linear(16 * 12 * 12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv2(F.relu(self.conv1(x)))))
        if self.flatten == "view":
            x = x.view(x.size(0), -1)
        elif self.flatten == "reshape":
            x = x.reshape(x.shape[0], -1)
        else:
            x = self.to_flat(x)
        return self.fc(x)


def _digits(flatten: str) -> featvis.FeatvisModel:
    torch.manual_seed(0)
    return featvis.as_model(Digits(flatten), input_size=28)


@pytest.mark.parametrize("flatten", ["view", "reshape", "module"])
def test_a_class_renders_whatever_way_the_model_flattens(flatten):
    """A class logit of each style renders, and its reported activation is the plain model's logit on
    the returned image (resized to 28 px as the engine measures it); only ``view`` needs the plain layout."""
    model = _digits(flatten)
    expected = torch.contiguous_format if flatten == "view" else torch.channels_last
    assert precision.memory_format(model) == expected
    (result,) = featvis.render(model, ["fc:3"], steps=8, size=28, progress=False)
    with torch.no_grad():
        logit = model.net(model.normalize(resize(result.image[None], 28)))[0, 3]
    assert result.activation == pytest.approx(float(logit), rel=1e-4, abs=1e-5)
    assert result.plausibility is not None  # the natural-photo features ran through the user's forward too


def test_a_large_picture_of_a_model_that_takes_only_its_own_size():
    """`render --size 64` of a 28 px-only model's class: the model sees the picture resized to 28 px (a
    conv channel, which takes any size, still sees 64 px); the activation is the plain logit at 28 px."""
    model = _digits("view")
    (result,) = featvis.render(model, ["fc:3"], steps=4, size=64, progress=False, natural=False)
    assert result.image.shape == (3, 64, 64)
    with torch.no_grad():
        logit = model.net(model.normalize(resize(result.image[None], 28)))[0, 3]
    assert result.activation == pytest.approx(float(logit), rel=1e-4, abs=1e-5)
    (conv,) = featvis.render(model, ["conv2:1"], steps=4, size=64, progress=False, natural=False)
    with torch.no_grad():
        maps = model.net.conv2(F.relu(model.net.conv1(model.normalize(resize(conv.image[None], 64)))))
    assert maps.shape[-1] == 60  # measured at 64 px, not 28
    assert conv.activation == pytest.approx(float(maps[0, 1].mean()), rel=1e-4, abs=1e-5)


def test_a_dead_channel_is_never_a_silent_zero():
    """A conv + ReLU channel whose bias keeps it below zero for every image in [0, 1] (checked here on
    noise and a white and a black image, with the plain modules): the render refuses it in one line,
    and ``strict=False`` hands the picture back flagged, its activation exactly 0. (After the 16 redirected
    steps its gradient is zero for good; a shorter render may simply not have reached a unit yet.)"""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    model = featvis.as_model(net, input_size=28)
    with torch.no_grad():
        net[2].bias[2] = -1000.0
        probes = torch.cat([torch.rand(4, 3, 28, 28), torch.ones(1, 3, 28, 28), torch.zeros(1, 3, 28, 28)])
        assert float(net(model.normalize(probes))[:, 2].max()) == 0.0
    with pytest.raises(featvis.FeatvisError, match=r"3:2: the objective never moved from 0 in 20 steps"):
        featvis.render(model, ["3:2"], steps=20, size=28, progress=False, natural=False)  # past the 16 redirected steps
    (flat,) = featvis.render(model, ["3:2"], steps=20, size=28, progress=False, natural=False, strict=False)
    assert flat.activation == 0.0 and "never moved" in flat.unmoved
    (alive,) = featvis.render(model, ["3:1"], steps=6, size=28, progress=False, natural=False)
    assert alive.unmoved is None and alive.activation > 0


def test_circuits_of_a_28_px_model():
    """conv1 -> ReLU -> conv2 of the digit CNN: the expanded weights are conv2's own kernels (ReLU taken as
    the identity), so the strongest inputs of conv2:1 are conv1's channels ranked by the norm of
    conv2.weight[1, c]; the field search runs the model at its own 28 px (it takes no other size)."""
    model = _digits("view")
    connections = featvis.top_connections(model, "conv2:1", "conv1", k=3)
    norms = model.net.conv2.weight.detach()[1].flatten(1).norm(dim=1)
    assert [c.channel for c in connections.inputs] == norms.argsort(descending=True)[:3].tolist()
    assert [c.strength for c in connections.inputs] == pytest.approx(norms.sort(descending=True).values[:3].tolist(), rel=1e-5)


class GrayDigits(nn.Module):
    """28 px grayscale input with its own normalisation (MNIST's 0.1307 / 0.3081), nn.ReLU modules."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(8 * 11 * 11, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.relu2(self.conv2(self.relu1(self.conv1(x)))), 1))


def _gray_input(image: torch.Tensor) -> torch.Tensor:
    """What the user's own pipeline feeds the net: luma (ITU-R BT.601, PIL's convert("L")), then normalised."""
    luma = 0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]
    return ((luma - 0.1307) / 0.3081)[:, None]


def test_a_grayscale_28_px_model_with_its_own_normalisation():
    torch.manual_seed(0)
    net = GrayDigits().eval()
    model = featvis.as_model(net, input_size=28, mean=(0.1307,), std=(0.3081,))
    assert model.grayscale  # its first convolution reads one channel
    photo = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # the photo as classify prepares it (ImageNet-style resize and centre crop, tested elsewhere)
        expected = torch.softmax(net(_gray_input(model.prepare(photo).reshape(1, 3, 28, 28))), 1)[0]
    ((index, _, prob), *_) = model.classify([photo], top=1)[0]
    assert index == int(expected.argmax()) and prob == pytest.approx(float(expected.max()), rel=1e-5)
    (result,) = featvis.render(model, ["fc:4"], steps=6, size=28, progress=False)
    with torch.no_grad():
        logit = net(_gray_input(resize(result.image[None], 28)))[0, 4]
    assert result.activation == pytest.approx(float(logit), rel=1e-4, abs=1e-5)
    # receptive field of relu2 against the support of autograd's gradient on the user's own module
    field = featvis.receptive_field(model, "relu2")
    x = torch.zeros(1, 1, 28, 28, requires_grad=True)
    with torch.no_grad():
        net.conv1.weight.data, saved = torch.ones_like(net.conv1.weight), net.conv1.weight.data.clone()
    try:
        out = net.conv2(net.conv1(x))  # linear path: support of the gradient = the field
        out[0, 0, 5, 5].backward()
    finally:
        net.conv1.weight.data = saved
    rows = x.grad[0, 0].abs().sum(1).nonzero().flatten()
    assert field.size == (int(rows[-1] - rows[0] + 1),) * 2 == (7, 7) and field.stride == (2, 2)
    with pytest.raises(featvis.FeatvisError, match=r"reads 1 input channel.*take 1 value\(s\) each, got 1 and 3"):
        featvis.as_model(GrayDigits(), input_size=28, mean=(0.5,), std=(0.5, 0.5, 0.5))
    assert featvis.as_model(GrayDigits(), input_size=28).grayscale  # no mean/std: it refuses RGB, so it reads luma


def test_a_net_that_turns_rgb_into_one_channel_itself_takes_rgb():
    """Its first convolution reads one channel, but its forward averages the colours first: featvis
    feeds it RGB, as its own code expects, and the result equals the plain module's."""

    class Mono(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x.mean(1, keepdim=True))

    torch.manual_seed(0)
    net = Mono()
    model = featvis.as_model(net, input_size=16)
    assert not model.grayscale and net.training  # the trial forward left the module's mode alone
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(featvis.capture(model, x, ["conv"])["conv"], net(model.normalize(x)))


def test_layers_say_which_module_runs_more_than_once(capsys):
    """One ReLU module shared by three blocks: `featvis layers` counts its calls as a forward hook does
    and lists each call, ``act#k``, with the shape the hook saw."""
    from featvis.core.layer_table import layer_table

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = nn.ReLU()
            self.conv1, self.conv2, self.conv3 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 5, 3), nn.Conv2d(5, 6, 3)

        def forward(self, x):
            return self.act(self.conv3(self.act(self.conv2(self.act(self.conv1(x))))))

    net = Shared()
    model = featvis.as_model(net, input_size=16)
    seen = []
    handle = net.act.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
    try:
        rows = {row["name"]: row for row in layer_table(model)}
    finally:
        handle.remove()
    assert rows["act"]["calls"] == len(seen) == 3 and rows["conv2"]["calls"] == 1
    assert tuple(rows["act"]["output_shape"]) == seen[0] == (4, 14, 14)
    assert [(site["name"], tuple(site["output_shape"])) for site in rows["act"]["sites"]] == \
        [(f"act#{k}", shape) for k, shape in enumerate(seen, 1)]
    assert "sites" not in rows["conv2"]


def test_integrated_gradients_steps_are_bounded():
    """captum's Gauss-Legendre nodes for n steps build an n x n matrix (74.5 GiB at 100,000, measured as a
    MemoryError): the request is refused in one line before anything is allocated."""
    model = _digits("module")
    with pytest.raises(featvis.FeatvisError, match="integrated gradients takes 1 to 4096 steps, got 100000"):
        featvis.saliency(model, torch.rand(3, 28, 28), "ig", steps=100_000)


ZOO = '''
import torch
import torch.nn.functional as F
from torch import nn


class GrayDigits(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(1, 6, 5), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(6, 8, 3, stride=2), nn.ReLU()
        self.fc = nn.Linear(8 * 11 * 11, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.relu2(self.conv2(self.relu1(self.conv1(x)))), 1))


class Mobile(nn.Module):
    """One ReLU module shared by every block, batch norms, a depthwise convolution, a residual addition,
    squeeze-excite, a view flatten, and a print in its forward."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 16, 1), nn.Sigmoid())
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.act(self.bn1(self.conv1(x)))
        x = x + self.act(self.bn2(self.conv2(x)))
        x = self.act(self.bn3(self.conv3(x)))
        x = x * self.se(x)
        print("forward")
        return self.fc(F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1))


class Functional(nn.Module):
    """Functional ReLUs and pooling, a reshape flatten, an nn.Flatten on the way, three input channels."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.to_flat = nn.Flatten()
        self.fc = nn.Linear(8 * 8 * 8, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(self.to_flat(x.reshape(x.shape[0], 8, 8, 8)))


def gray():
    torch.manual_seed(0)
    return GrayDigits()


def functional():
    torch.manual_seed(0)
    return Functional()


def mobile():
    torch.manual_seed(0)
    return Mobile()
'''


@pytest.mark.parametrize("factory, options, layer, neuron", [
    ("gray", ["--input-size", "28", "--mean", "0.1307", "--std", "0.3081"], "relu2", "conv2:1@2,3"),
    ("mobile", ["--input-size", "32"], "act#3", "bn3:1@2,3"),
    ("functional", ["--input-size", "32"], "conv2", "conv2:1@2,3"),
], ids=["grayscale-28px", "shared-activation-se-depthwise-residual", "functional-relu-reshape-flatten"])  # act#3: the shared ReLU's third call
def test_every_command_runs_on_user_cnns_or_says_why_in_one_line(factory, options, layer, neuron, tmp_path, monkeypatch, capsys):
    """Every command on each zoo model, through the command line as a user types it: exit 0 with JSON on
    stdout (the model's own prints go to stderr), never a traceback; `layers` lists exactly the
    module paths PyTorch's named_modules gives."""
    import json

    from PIL import Image as PILImage

    from featvis.cli import main

    (tmp_path / "zoo.py").write_text(ZOO)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "photos").mkdir()
    rng = torch.Generator().manual_seed(0)
    for i in range(3):
        PILImage.fromarray((torch.rand(40, 40, 3, generator=rng) * 255).byte().numpy()).save(tmp_path / "photos" / f"p{i}.png")
    model = f"zoo.py:{factory}"
    photo = "photos/p0.png"
    commands = [
        ["layers", model, *options],
        ["classify", model, photo, *options],
        ["render", model, f"{layer}:1", neuron, "fc:2", *options, "--steps", "2", "--size", "32", "--out-dir", "renders"],
        ["rf", model, layer, *options],
        ["filters", model, "conv1", "-o", "filters.png"],
        ["gallery", model, *options, "--layers", layer, "--channels", "0:2", "--steps", "2", "--size", "32", "--out", "gallery"],
        ["maps", model, layer, photo, *options, "-o", "maps.png"],
        *(["saliency", model, photo, *options, "--method", method, "-o", f"{method}.png"]
          for method in ("saliency", "ixg", "ig", "smoothgrad", "guided", "deconv", "gradcam", "guided-gradcam", "occlusion")),
        ["examples", model, *options, "--images", "photos", "--layers", layer, "--out", "examples", "--workers", "0", "--k", "2"],
        ["circuit", model, f"{layer}:1", *options, "--from", "conv1", "--k", "2"],
        ["explain", model, photo, *options, "--layer", layer, "--groups", "2", "--steps", "0", "-o", "explain.html"],
    ]
    if factory == "mobile":  # the shared ReLU's bare name is its first call, said once; conv3 before it can be negative
        commands += [["render", model, "act:1", *options, "--steps", "2", "--size", "32", "-o", "first.png"],
                     ["explain", model, photo, *options, "--layer", "conv3", "--groups", "2", "--steps", "0", "-o", "e2.html"]]
    for argv in commands:
        code = main([*argv, "--json", "-q"])
        out, err = capsys.readouterr()
        assert "Traceback" not in err, (argv, err)
        if "conv3" in argv:  # NMF needs non-negative maps: the hint names the shared ReLU's call after conv3
            assert code == 2 and err.splitlines()[-1].startswith("featvis: error: 'conv3' has negative activations"), err
            assert "e.g. act#3, the first layer after it" in err, err
            continue
        if argv[0] == "explain" and factory == "functional":  # F.relu outputs are no layer: the hint says how to make one
            assert code == 2 and "make the one after 'conv2' an nn.ReLU module" in err.splitlines()[-1], err
            continue
        if "act:1" in argv:
            assert "'act' runs 3 times in one forward pass" in err and "takes its first call, act#1" in err, err
        assert code == 0, (argv, err)
        json.loads(out)  # JSON only on stdout
        if argv[0] == "layers":
            net = __import__("zoo").__dict__[factory]()
            assert [row["name"] for row in json.loads(out) if "concat" not in row] == \
                [path for path, _ in net.named_modules() if path]
