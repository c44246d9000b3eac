"""One activation module called in every block (EfficientNet's ``_swish``, torchvision ResNet's ``relu``):
``act#k`` names its k-th call and every analysis takes exactly that call; the bare name is the first
call, with a warning. Ground truth: the same network written with one module per call (``Unshared``,
the same weights), whose layers featvis and captum handle with no sharing at all, and plain PyTorch.
"""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradCam
from torch import nn

import featvis
from featvis.saliency import default_gradcam_layer

SIZE = 32


class Shared(nn.Module):
    """conv -> bn -> act three times (the second strided), one ``act`` for all, then a linear head."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 5, 3, stride=2), nn.BatchNorm2d(5)
        self.conv3, self.bn3 = nn.Conv2d(5, 6, 3), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        x = self.act(self.bn2(self.conv2(x)))
        x = self.act(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


class Unshared(Shared):
    """The same network with one ReLU module per call: ``act1``, ``act2``, ``act3``."""

    def __init__(self):
        super().__init__()
        del self.act
        self.act1, self.act2, self.act3 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def _pair(positive: bool = False) -> tuple[featvis.FeatvisModel, featvis.FeatvisModel]:
    """The two networks with the same weights (batch norms with their own statistics); ``positive``: constant
    positive weights and zero biases, so every unit is positive and its gradient reaches its whole field."""
    torch.manual_seed(0)
    shared = Shared()
    with torch.no_grad():
        for module in shared.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        if positive:
            for name, param in shared.named_parameters():
                param.fill_(1.0 / param[0].numel() if param.dim() > 1 else float(name.endswith("weight")))
            for module in shared.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.running_mean.zero_()
    unshared = Unshared()
    unshared.load_state_dict(shared.state_dict())
    wrap = dict(input_size=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return featvis.as_model(shared.eval(), **wrap), featvis.as_model(unshared.eval(), **wrap)


def test_each_call_is_its_own_layer_and_the_bare_name_is_the_first_call():
    shared, unshared = _pair()
    x = torch.rand(2, 3, SIZE, SIZE)
    sites = [f"act#{k}" for k in (1, 2, 3)]
    got = featvis.capture(shared, x, sites)
    want = featvis.capture(unshared, x, ["act1", "act2", "act3"])
    for k, site in enumerate(sites, 1):
        torch.testing.assert_close(got[site], want[f"act{k}"], rtol=0, atol=0)
    with pytest.warns(UserWarning, match=r"'act' runs 3 times .* takes its first call, act#1 .* up to act#3"):
        first = featvis.capture(shared, x, ["act"])["act"]
    torch.testing.assert_close(first, want["act1"], rtol=0, atol=0)
    with pytest.raises(featvis.FeatvisError, match=r"'act' runs 3 time\(s\) .* call #4 does not exist; name a call from #1 to #3"):
        featvis.capture(shared, x, ["act#4"])
    with pytest.raises(featvis.FeatvisError, match=r"a call after '#' is a number"):
        featvis.capture(shared, x, ["act#last"])
    # a module that runs once: #1 is the module itself
    with torch.no_grad():
        torch.testing.assert_close(featvis.capture(shared, x, ["conv2#1"])["conv2#1"], unshared.net.conv2(want["act1"]))


def test_receptive_field_of_each_call_is_autograds_support():
    """Positive weights: the input pixels the centre unit of each call depends on (autograd's support,
    plain PyTorch on the network with one module per call) are the field featvis gives that call."""
    shared, unshared = _pair(positive=True)
    for k in (1, 2, 3):
        field = featvis.receptive_field(shared, f"act#{k}")
        x = torch.full((1, 3, SIZE, SIZE), 0.5, requires_grad=True)
        act = featvis.capture(unshared, x, [f"act{k}"], detach=False)[f"act{k}"]
        assert tuple(act.shape[1:]) == field.output_shape
        unit = (act.shape[-2] // 2, act.shape[-1] // 2)
        (grad,) = torch.autograd.grad(act[0, :, unit[0], unit[1]].sum(), x)
        rows, cols = grad[0].abs().sum(0).sum(1).nonzero().flatten(), grad[0].abs().sum(0).sum(0).nonzero().flatten()
        box = field.region(unit)
        assert (box.y0, box.x0, box.y1, box.x1) == (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1), k


def test_gradcam_at_a_call_is_captums_on_that_calls_own_module():
    """Grad-CAM at ``act#2`` is captum's LayerGradCam on the unshared network's ``act2`` (layer resolution),
    placed by act#2's field: the same input-space map featvis makes of the unshared network. Without a
    layer, Grad-CAM takes the last call (``act#3``, the last spatial map), not a batch norm before it."""
    shared, unshared = _pair()
    photo = torch.rand(3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    x = photo[None]
    assert default_gradcam_layer(shared, x) == "act#3" and default_gradcam_layer(unshared, x) == "act3"
    def cam(k: int, target: int) -> torch.Tensor:
        return LayerGradCam(unshared, getattr(unshared.net, f"act{k}")).attribute(x, target=target, relu_attributions=True)

    target = next(t for t in range(3) if all(float(cam(k, t).detach().abs().sum()) > 0 for k in (2, 3)))  # real maps, not zeros
    for k in (2, 3):
        got = featvis.saliency(shared, x, "gradcam", layer=f"act#{k}", target=target)
        want = featvis.saliency(unshared, x, "gradcam", layer=f"act{k}", target=target)
        torch.testing.assert_close(got.map, want.map, rtol=1e-5, atol=1e-7)
        layer_map = cam(k, target).detach()[0, 0]  # captum's map at layer resolution, read at the unit centres
        field = featvis.receptive_field(unshared, f"act{k}")
        for unit in [(0, 0), (layer_map.shape[0] - 1, layer_map.shape[1] - 1), (2, 3)]:
            y, x_ = (int(c) for c in field.center(unit))
            assert float(got.map[y, x_]) == pytest.approx(float(layer_map[unit]), rel=1e-5, abs=1e-7)
    default = featvis.saliency(shared, x, "gradcam", target=target)
    assert default.layer == "act#3"
    torch.testing.assert_close(default.map, featvis.saliency(unshared, x, "gradcam", target=target).map, rtol=1e-5, atol=1e-7)


def test_render_examples_and_circuits_take_the_named_call():
    shared, unshared = _pair()
    (result,) = featvis.render(shared, ["act#2:1"], steps=4, size=SIZE, progress=False, natural=False)
    with torch.no_grad():  # the plain network's act2 on the returned picture
        plain = featvis.capture(unshared, result.image[None], ["act2"])["act2"][0, 1].mean()
    assert result.activation == pytest.approx(float(plain), rel=1e-4, abs=1e-6)

    weights = featvis.expanded_weights(shared, "act#1", "act#2")
    bn = unshared.net.bn2  # ReLU taken as the identity: conv2's kernel times the batch norm's scale
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    torch.testing.assert_close(weights, unshared.net.conv2.weight.double() * scale[:, None, None, None], rtol=1e-9, atol=1e-12)


def test_dataset_examples_of_a_call(tmp_path):
    from PIL import Image

    shared, unshared = _pair()
    rng = torch.Generator().manual_seed(0)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(5):
        Image.fromarray((torch.rand(SIZE, SIZE, 3, generator=rng) * 255).byte().numpy()).save(photos / f"p{i}.png")
    summary = featvis.dataset_examples(shared, photos, ["act#2"], tmp_path / "out", channels="0:2", k=2, workers=0,
                                       progress=False).summary
    paths = sorted(str(p) for p in photos.iterdir())
    field = featvis.receptive_field(unshared, "act2")
    for channel in (0, 1):
        peaks = {}
        for path in paths:  # each photo alone through the network with one module per call
            with torch.no_grad():
                act = featvis.capture(unshared, unshared.prepare(featvis.load_image(path)), ["act2"])["act2"][0, channel]
            value, flat = act.flatten().max(0)
            peaks[path] = (float(value), (int(flat) // act.shape[1], int(flat) % act.shape[1]))
        entries = summary["layers"]["act#2"][str(channel)]
        assert [e["path"] for e in entries] == sorted(paths, key=lambda p: (-peaks[p][0], p))[:2]
        for entry in entries:
            assert entry["activation"] == pytest.approx(peaks[entry["path"]][0], rel=1e-4, abs=1e-5)
            box = field.region(peaks[entry["path"]][1]).clip(SIZE, SIZE)
            assert entry["box"] == [box.y0, box.x0, box.y1, box.x1]


def test_counting_the_calls_never_touches_the_users_model():
    """The calls are counted on a copy of the module tree without hooks: the user's own hook sees exactly the
    one forward pass of the capture. A lazy layer keeps waiting for the user's first real input: a model with
    one is not counted (the pass would shape it), and ``#k`` is checked when the model runs."""
    torch.manual_seed(0)
    for net, counted in [(nn.Sequential(Shared()), True), (nn.Sequential(Shared(), nn.LazyLinear(2)), False)]:
        model = featvis.as_model(net, input_size=SIZE)
        assert model.calls("0.act") == (3 if counted else None)
        assert counted or torch.nn.parameter.is_lazy(net[1].weight)  # the count never materialised it
        seen = []
        handle = net[0].act.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape[1:])))
        try:
            got = featvis.capture(model, torch.rand(1, 3, SIZE, SIZE), ["0.act#2"], early_exit=False)["0.act#2"]
        finally:
            handle.remove()
        assert seen == [(4, 30, 30), (5, 14, 14), (6, 12, 12)] and tuple(got.shape[1:]) == seen[1]
        with pytest.raises(featvis.FeatvisError, match=r"0.act#4 did not run|call #4 does not exist"):
            featvis.capture(model, torch.rand(1, 3, SIZE, SIZE), ["0.act#4"])
