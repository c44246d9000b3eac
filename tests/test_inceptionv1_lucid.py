"""Lucid's InceptionV1 (inception5h): the whole forward against one written here from TensorFlow's op
definitions, the LRN against TensorFlow's formula, the architecture against Lucent's module (its LRN replaced),
TensorFlow's SAME rule and measurement; the loader on state dicts with the published key names and shapes; the
1008 labels."""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lucent.modelzoo.inceptionv1.InceptionV1 import InceptionV1 as LucentInceptionV1

import featvis
from featvis.cli import main
from featvis.models.labels import imagenet_synsets
from featvis.models.inceptionv1_lucid import InceptionV1Lucid, SamePad, lucid_state_dict
from featvis.models.weights import WEIGHTS_ENV
from test_receptive_field import check_against_measurement

BLOCKS = ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b")


pytestmark = pytest.mark.usefixtures("one_thread")


def tf_lrn(x: torch.Tensor, **_) -> torch.Tensor:
    """tf.nn.local_response_normalization as TensorFlow documents it, channel by channel (TF's depth axis is
    dim 1 here): sqr_sum[d] = sum(x[d - depth_radius : d + depth_radius + 1] ** 2), the slice clipped at the
    ends; x / (bias + alpha * sqr_sum) ** beta, with the graph's depth_radius 5, bias 2, alpha 1e-4, beta 0.5
    (the arguments Lucent passes are ignored)."""
    radius, bias, alpha, beta = 5, 2.0, 1e-4, 0.5
    sqr_sum = torch.stack([(x[:, max(d - radius, 0) : d + radius + 1] ** 2).sum(1) for d in range(x.shape[1])], 1)
    return x / (bias + alpha * sqr_sum) ** beta


class _TensorFlowLRN:
    """Lucent's ``F`` with local_response_norm replaced by TensorFlow's (Lucent converts it as size 9,
    alpha/9, bias 1, which is not the graph's LRN); everything else is PyTorch's."""

    def __getattr__(self, name):
        return tf_lrn if name == "local_response_norm" else getattr(F, name)


@pytest.fixture(scope="module")
def lucent_state() -> dict[str, torch.Tensor]:
    """Random weights with exactly Lucent's key names and shapes (He-scaled so activations stay moderate)."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, tensor in LucentInceptionV1(redirected_ReLU=False).state_dict().items():
        fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
        std = math.sqrt(2.0 / fan_in) if tensor.dim() > 1 else 0.1
        state[key] = torch.randn(tensor.shape, generator=generator) * std
    return state


def test_state_dict_layout_is_lucents_and_mixed4a_has_508_channels(lucent_state):
    ours = InceptionV1Lucid()
    assert len(ours.state_dict()) == len(lucent_state) == 116  # 57 convolutions + the classifier, weight and bias
    assert lucent_state["mixed4b_1x1_pre_relu_conv.weight"].shape[1] == 508
    assert ours.softmax2_pre_activation.out_features == lucent_state["softmax2_pre_activation_matmul.weight"].shape[0] == 1008


@pytest.mark.parametrize("size", [224, 256])
def test_same_outputs_as_lucents_module_on_the_same_state_dict(lucent_state, tmp_path, monkeypatch, size):
    torch.save(lucent_state, tmp_path / "inception5h.pth")
    weights = tmp_path / "inception5h.pth" if size == 224 else tmp_path  # a file, or a folder holding it
    model = featvis.load_model("inceptionv1_lucid", weights=weights)
    lucent = LucentInceptionV1(redirected_ReLU=False).eval()
    lucent.load_state_dict(lucent_state)
    monkeypatch.setattr(importlib.import_module("lucent.modelzoo.inceptionv1.InceptionV1"), "F", _TensorFlowLRN())
    seen = {}
    for name in ("conv2d0", "maxpool0", "mixed3b", "mixed4a", "mixed5b", "softmax2_pre_activation_matmul"):
        getattr(lucent, name).register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, o))
    photo = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lucent(photo * 255 - 117)  # Lucent's model takes Lucid's input range
        ours = featvis.capture(model, photo, ["conv2d0", "maxpool0", "mixed3b", "mixed4a", "mixed5b"], early_exit=False)
        logits = model(photo)
    for name in ("conv2d0", "maxpool0", "mixed3b", "mixed4a", "mixed5b"):
        torch.testing.assert_close(ours[name], seen[name], rtol=1e-4, atol=1e-4 * float(seen[name].abs().max()))
    if size == 224:  # Lucent's head (a 7x7 average pool, then a reshape) only works at 224
        torch.testing.assert_close(logits, seen["softmax2_pre_activation_matmul"], rtol=1e-4, atol=1e-4)


def test_captums_layout_loads_to_the_same_network(lucent_state, tmp_path):
    """captum's optim branch names the same tensors conv1 ... mixed5b.conv_5x5, fc (its inception_v1.py)."""
    captum_branch = {"1x1": "conv_1x1", "3x3_bottleneck": "conv_3x3_reduce", "3x3": "conv_3x3",
                     "5x5_bottleneck": "conv_5x5_reduce", "5x5": "conv_5x5", "pool_reduce": "pool_proj"}
    renamed = {"conv2d0": "conv1", "conv2d1": "conv2", "conv2d2": "conv3", "softmax2_pre_activation_matmul": "fc"}
    renamed |= {f"mixed{b}_{lucid}_pre_relu_conv": f"mixed{b}.{captum}" for b in BLOCKS for lucid, captum in captum_branch.items()}
    renamed |= {f"conv2d{i}_pre_relu_conv": f"conv{i + 1}" for i in range(3)}
    captum_state = {f"{renamed[key.rsplit('.', 1)[0]]}.{key.rsplit('.', 1)[1]}": value for key, value in lucent_state.items()}
    captum_state["aux1.fc1.weight"] = torch.zeros(1024, 2048)  # captum's optional auxiliary heads are ignored
    torch.save(lucent_state, tmp_path / "lucent.pth")
    torch.save(captum_state, tmp_path / "captum.pth")
    photo = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        from_lucent = featvis.load_model("inceptionv1_lucid", weights=tmp_path / "lucent.pth")(photo)
        from_captum = featvis.load_model("inceptionv1_lucid", weights=tmp_path / "captum.pth")(photo)
    assert torch.equal(from_lucent, from_captum)


def tf_same(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow's documented SAME rule: (output size, padding before, padding after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


@pytest.mark.parametrize("size", [224, 225, 227, 230])
def test_conv2d0_pads_as_tensorflow_same_measured_by_gradient(size):
    """The input rows each output row depends on, measured with autograd on the first and last rows."""
    net = InceptionV1Lucid().double()
    with torch.no_grad():
        net.conv2d0.conv.weight.fill_(1.0)
    out, before, _ = tf_same(size, 7, 2)
    x = torch.ones(1, 3, size, size, dtype=torch.float64, requires_grad=True)
    y = net.conv2d0.conv(net.conv2d0.pad(x))
    assert y.shape[-2:] == (out, out)
    for row in (0, out - 1):
        (grad,) = torch.autograd.grad(y[0, 0, row, 0], x, retain_graph=True)
        rows = grad[0].abs().sum((0, 2)).nonzero().flatten().tolist()
        start = row * 2 - before
        assert rows == list(range(max(start, 0), min(start + 7, size))), (size, row)


@pytest.mark.parametrize("size", [112, 113])
def test_stride2_max_pools_are_tensorflow_same_and_ignore_their_padding(size):
    pool = InceptionV1Lucid().maxpool0
    x = -1.0 - torch.rand(1, 2, size, size, generator=torch.Generator().manual_seed(3))  # all negative
    y = pool(x)
    assert y.shape[-1] == tf_same(size, 3, 2)[0]
    assert float(y.max()) < -1.0  # a zero pad would have won at the borders
    out, before, _ = tf_same(size, 3, 2)
    start = 2 * (out - 1) - before  # the last window, in the unpadded image (it runs past the edge)
    torch.testing.assert_close(y[0, :, -1, -1], x[0, :, start:, start:].amax((1, 2)))
    torch.testing.assert_close(y[0, :, 0, 0], x[0, :, : 3 - before, : 3 - before].amax((1, 2)))


def test_lrn_is_tensorflows_formula_with_the_graphs_attributes():
    """Both LRN modules against the TF definition, in float64, on values large enough that alpha * sqr_sum
    is of the order of the bias (a wrong window, alpha or bias shows)."""
    x = 40 * torch.randn(2, 24, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    net = InceptionV1Lucid().double()
    for lrn in (net.localresponsenorm0, net.localresponsenorm1):
        torch.testing.assert_close(lrn(x), tf_lrn(x), rtol=1e-12, atol=0)
    lucents = F.local_response_norm(x, size=9, alpha=9.99999974738e-05, beta=0.5, k=1)  # Lucent 0.1.8's call
    assert float(((lucents - tf_lrn(x)) / tf_lrn(x)).abs().max()) > 0.3  # not the graph's op


def tf_conv(x: torch.Tensor, state: dict[str, torch.Tensor], node: str, stride: int = 1) -> torch.Tensor:
    """``node``'s Conv2D + BiasAdd with SAME padding: ``tf_same``'s zeros before and after on each axis."""
    weight, bias = state[f"{node}_pre_relu_conv.weight"], state[f"{node}_pre_relu_conv.bias"]
    (_, top, bottom), (_, left, right) = (tf_same(x.shape[axis], weight.shape[axis], stride) for axis in (-2, -1))
    return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, stride)


def tf_max_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """A 3x3 MaxPool with SAME padding: each output the max over its window's cells inside the input."""
    (rows, top, _), (cols, left, _) = (tf_same(x.shape[axis], 3, stride) for axis in (-2, -1))
    starts = [(i * stride - top, j * stride - left) for i in range(rows) for j in range(cols)]
    windows = [x[..., max(r, 0) : r + 3, max(c, 0) : c + 3].amax((-2, -1)) for r, c in starts]
    return torch.stack(windows, -1).unflatten(-1, (rows, cols))


def tf_graph_logits(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """inception5h's softmax2_pre_activation, node by node from TensorFlow's op definitions (Lucent's key names)."""
    x = tf_lrn(tf_max_pool(F.relu(tf_conv(x, state, "conv2d0", stride=2)), 2))  # conv2d0, maxpool0, localresponsenorm0
    x = tf_max_pool(tf_lrn(F.relu(tf_conv(F.relu(tf_conv(x, state, "conv2d1")), state, "conv2d2"))), 2)
    for block in BLOCKS:
        if block in ("4a", "5a"):
            x = tf_max_pool(x, 2)  # maxpool4, maxpool10
        name = f"mixed{block}"
        x = torch.cat([
            F.relu(tf_conv(x, state, f"{name}_1x1")),
            F.relu(tf_conv(F.relu(tf_conv(x, state, f"{name}_3x3_bottleneck")), state, f"{name}_3x3")),
            F.relu(tf_conv(F.relu(tf_conv(x, state, f"{name}_5x5_bottleneck")), state, f"{name}_5x5")),
            F.relu(tf_conv(tf_max_pool(x, 1), state, f"{name}_pool_reduce")),
        ], 1)  # ConcatV2 on the depth axis
    pooled = x.mean((-2, -1))  # avgpool0: at 224 a 7x7 VALID average over the whole 7x7 map
    return pooled @ state["softmax2_pre_activation_matmul.weight"].T + state["softmax2_pre_activation_matmul.bias"]


@pytest.mark.parametrize("size", [64, 67])  # even: asymmetric SAME pads at every stride-2 layer; odd: a mix
def test_whole_forward_is_the_graph_computed_from_tensorflows_definitions(lucent_state, size):
    state = {key: value.double() for key, value in lucent_state.items()}
    net = InceptionV1Lucid().double().eval()
    net.load_state_dict(lucid_state_dict(state, "random weights"))
    x = torch.rand(1, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 255 - 117
    with torch.no_grad():
        expected = tf_graph_logits(state, x)
        torch.testing.assert_close(net(x), expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))


def test_every_layer_receptive_field_matches_measurement():
    net = InceptionV1Lucid()
    for module in net.modules():  # the measuring copy averages instead of max-pooling: pad its pools with zeros
        if isinstance(module, SamePad):
            module.value = 0.0
    fields = featvis.receptive_fields(featvis.as_model(net))
    assert not any(rf.unanalysed for rf in fields)
    assert check_against_measurement(net) == sum(1 if rf.stride == (0, 0) else 2 for rf in fields)
    conv2d0 = featvis.receptive_field(featvis.load_model("inceptionv1_lucid", pretrained=False), "conv2d0")
    assert (conv2d0.size, conv2d0.stride, conv2d0.padding) == ((7, 7), (2, 2), (2, 2))  # TF pads 2 before, 3 after at 224


def test_labels_are_the_imagenet_classes_after_a_dummy():
    labels = featvis.load_model("inceptionv1_lucid", pretrained=False).labels
    assert len(labels) == 1008 and labels[0] == "dummy"
    synonyms = [{name.strip() for name in names.split(",")} for _, names in imagenet_synsets()]
    matched = {i for label in labels[1:1001] for i, names in enumerate(synonyms) if label.replace(" [ground]", "") in names}
    assert len(matched) == 1000  # every ImageNet class is among the 1000 labels


def test_cli_layers_need_no_weights_and_a_missing_file_is_one_line(tmp_path, capsys, monkeypatch):
    assert main(["layers", "inceptionv1_lucid", "--json"]) == 0
    layers = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert layers["mixed4a"]["output_shape"][0] == 508 and "mixed4a_3x3_bottleneck" in layers["mixed4a.branch2.0"]["aliases"]
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path))
    monkeypatch.setenv("FEATVIS_CACHE_DIR", str(tmp_path))
    featvis.save_image(torch.rand(3, 32, 32), tmp_path / "x.png")
    assert main(["classify", "inceptionv1_lucid", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "inception5h.pth not found" in err and "no published SHA-256" in err and len(err.strip().splitlines()) == 1


def test_real_inception5h_weights_classify_the_coffee_photo(coffee):
    root = os.environ.get(WEIGHTS_ENV)
    if not root or not (Path(root) / "inception5h.pth").is_file():
        pytest.skip(f"inception5h.pth absent: put Lucent's file in ${WEIGHTS_ENV} to check the real weights")
    model = featvis.load_model("inceptionv1_lucid", progress=False)
    assert model.classify([coffee], top=1)[0][0][1] in ("espresso", "cup", "coffee mug")
