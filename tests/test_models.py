"""The real pretrained models: architecture against the Caffe definition, predictions on real photos."""

from __future__ import annotations

import re

import pytest
import torch
import torchvision
from torch import nn

import featvis
from featvis.inspect.filters import conv_layer
from featvis.core.plan import resolve_layers
from featvis.models.inceptionv1 import BLOCKS, CAFFE_LAYERS, InceptionV1


def _prototxt_layers(text: str) -> dict[str, dict[str, int]]:
    """Caffe layer name -> its convolution/pooling parameters, parsed from deploy.prototxt."""
    layers = {}
    for block in re.findall(r"layer\s*\{(.*?)\n\}", text, flags=re.S):
        name = re.search(r'name:\s*"([^"]+)"', block).group(1)
        params = {key: int(value) for key, value in re.findall(r"(kernel_size|stride|pad|num_output):\s*(\d+)", block)}
        params["type"] = re.search(r'type:\s*"([^"]+)"', block).group(1)
        layers[name] = params
    return layers


def test_inceptionv1_matches_the_caffe_definition(weights_dir):
    """Every convolution of our module has the kernel, stride, padding and width of deploy.prototxt."""
    caffe = _prototxt_layers((weights_dir / "bvlc_googlenet" / "deploy.prototxt").read_text())
    net = InceptionV1()
    convs = {path: m for path, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(convs) == {p for p in CAFFE_LAYERS if p != "fc"}
    conv_names = {n for n, p in caffe.items() if p["type"] == "Convolution"}
    assert conv_names == {CAFFE_LAYERS[p] for p in convs}
    for path, conv in convs.items():
        spec = caffe[CAFFE_LAYERS[path]]
        assert conv.kernel_size == (spec["kernel_size"],) * 2, path
        assert conv.stride == (spec.get("stride", 1),) * 2, path
        assert conv.padding == (spec.get("pad", 0),) * 2, path
        assert conv.out_channels == spec["num_output"], path
    pools = [p for n, p in caffe.items() if p["type"] == "Pooling" and p.get("stride", 1) == 2]
    ours = [m for m in net.modules() if isinstance(m, nn.MaxPool2d) and m.stride == 2]
    assert len(pools) == len(ours) == 4 and all(m.ceil_mode and m.kernel_size == 3 for m in ours)
    assert sum(p.numel() for p in net.parameters()) == 6_998_552  # SOURCE.md's count


def test_inceptionv1_classifies_real_photos(inceptionv1, coffee, chelsea):
    coffee_top, cat_top = inceptionv1.classify([coffee, chelsea], top=3)
    assert coffee_top[0][1] == "espresso" and coffee_top[0][2] > 0.8
    assert [label for _, label, _ in cat_top] == ["Egyptian cat", "tiger cat", "tabby"]


def test_squeezenet_classifies_real_photos(squeezenet, coffee, chelsea):
    assert squeezenet.input_size == 227
    coffee_top, cat_top = squeezenet.classify([coffee, chelsea], top=1)
    assert coffee_top[0][1] == "espresso" and coffee_top[0][2] > 0.9
    assert cat_top[0][1] == "Egyptian cat"


def test_inceptionv1_layer_shapes_and_aliases(inceptionv1):
    x = torch.rand(1, 3, 224, 224)
    acts = featvis.capture(inceptionv1, x, ["inception4a", "mixed4a", "mixed4a_5x5", "conv2d0", "mixed5b"])
    assert acts["inception4a"].shape == (1, 512, 14, 14)
    assert torch.equal(acts["mixed4a"], acts["inception4a"])
    assert acts["mixed4a_5x5"].shape == (1, 48, 14, 14)  # the paper's #5x5 for 4a
    assert acts["conv2d0"].shape == (1, 64, 112, 112)
    assert acts["mixed5b"].shape == (1, 1024, 7, 7)
    assert inceptionv1.resolve("mixed4a_3x3_pre_relu") == "inception4a.branch2.1.conv"


def test_concat_pre_relu_layers_and_where_they_are_refused(inceptionv1, coffee):
    """mixedXX_pre_relu joins the branch pre-activations in Inception.forward's order; its receptive field is
    its block's; analyses that need one module refuse it with one line naming a part to use instead."""
    for block in BLOCKS:
        branches = [f"mixed{block}_{branch}_pre_relu" for branch in ("1x1", "3x3", "5x5", "pool_reduce")]
        assert inceptionv1.parts(f"mixed{block}_pre_relu") == tuple(map(inceptionv1.resolve, branches))
    assert inceptionv1.parts("mixed4a") == ("inception4a",)
    refusal = (r"^layer 'mixed4a_pre_relu' concatenates 4 modules \(inception4a\.branch1\.conv, .*branch4\.1\.conv\), not one; "
               r"here name a single module, e\.g\. its part mixed4a_1x1_pre_relu$")
    # the receptive field is the union of the branches' (issue 31): that of the block's output, a ReLU later
    joined, block = featvis.receptive_fields(inceptionv1, ["mixed4a_pre_relu", "mixed4a"])
    assert (joined.size, joined.stride, joined.padding, joined.output_shape) == (block.size, block.stride, block.padding,
                                                                                block.output_shape)
    for use in (inceptionv1.resolve,
                lambda layer: conv_layer(inceptionv1, layer), lambda layer: resolve_layers(inceptionv1, [layer]),
                lambda layer: featvis.saliency(inceptionv1, coffee, "gradcam", layer=layer)):
        with pytest.raises(featvis.FeatvisError, match=refusal):
            use("mixed4a_pre_relu")
    with pytest.raises(featvis.FeatvisError, match="bad concat layers for model: 0, 9 clash with module names"):
        featvis.as_model(nn.Sequential(nn.Conv2d(3, 2, 1)), concats={"0": ["0"], "both": ["0", "9"]})


def test_relus_are_modules(inceptionv1):
    """Hooks and gradient tricks need every ReLU as an nn.ReLU module, none in-place."""
    relus = [m for m in inceptionv1.modules() if isinstance(m, nn.ReLU)]
    convs = [m for m in inceptionv1.modules() if isinstance(m, nn.Conv2d)]
    assert len(relus) == len(convs) == 57 and not any(r.inplace for r in relus)


def test_normalisation_is_caffe_bgr(inceptionv1):
    """The wrapper turns RGB in [0, 1] into BGR 0-255 minus the BVLC mean."""
    x = torch.rand(2, 3, 8, 8)
    expected = x[:, [2, 1, 0]] * 255 - torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)
    assert torch.allclose(inceptionv1.normalize(x), expected, atol=1e-4)


def test_torchvision_googlenet_through_torchvision_cache_and_explicit_file(tmp_path, monkeypatch, coffee):
    """torchvision's own weights API (its hub cache) and an explicit file give the same model as a direct load."""
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True, transform_input=True).eval()
    state = reference.state_dict()  # like torchvision's real file: with the auxiliary heads
    url = torchvision.models.GoogLeNet_Weights.IMAGENET1K_V1.url
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / url.rsplit("/", 1)[-1])
    torch.save(state, tmp_path / "googlenet.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    via_torchvision = featvis.load_model("googlenet", progress=False)
    via_file = featvis.load_model("googlenet", weights=tmp_path / "googlenet.pt")
    x = via_file.prepare(coffee)
    normalised = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference(normalised)
        assert torch.allclose(via_torchvision(x), expected, atol=1e-5)
        assert torch.allclose(via_file(x), expected, atol=1e-5)
    assert via_file.resolve("mixed4a") == "inception4a"


def test_torchvision_builder_with_weights_file(tmp_path):
    torch.manual_seed(1)
    net = torchvision.models.resnet18(weights=None).eval()
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    model = featvis.load_model("torchvision:resnet18", weights=tmp_path / "r18.pt")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), net(model.normalize(x)), atol=1e-5)
    assert model.labels is not None and len(model.labels) == 1000
    assert not any(p.requires_grad for p in model.parameters())


USER_MODEL = '''
import torch
from torch import nn

def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
'''


@pytest.mark.parametrize("form", ["file", "module"])
def test_user_cnn_from_file_or_module(tmp_path, monkeypatch, form):
    (tmp_path / "mynets.py").write_text(USER_MODEL)
    monkeypatch.chdir(tmp_path)
    spec = "mynets.py:small_cnn" if form == "file" else "mynets:small_cnn"
    model = featvis.load_model(spec, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=32)
    x = torch.rand(1, 3, 32, 32)
    torch.manual_seed(0)
    acts = featvis.capture(model, x, ["0", "3"])
    direct = model.net[0]((x - 0.5) / 0.25)
    assert torch.allclose(acts["0"], direct, atol=1e-6)
    assert acts["3"].shape == (1, 4, 13, 13)
    assert model.labels is None


def test_wrong_shaped_weights_are_refused(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), tmp_path / "r18_10.pt")
    with pytest.raises(featvis.FeatvisError, match=r"do not fit this model \(fc.weight has shape \[10, 512\]"):
        featvis.load_model("torchvision:resnet18", weights=tmp_path / "r18_10.pt")
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(featvis.FeatvisError, match=r"do not fit this model \(unexpected layer1.2"):
        featvis.load_model("torchvision:resnet18", weights=tmp_path / "r34.pt")


def test_unknown_model_names_the_forms():
    with pytest.raises(featvis.FeatvisError, match="unknown model 'vgg'.*torchvision:NAME"):
        featvis.load_model("vgg")
    with pytest.raises(featvis.FeatvisError, match="unknown torchvision model 'resnet1'"):
        featvis.load_model("torchvision:resnet1")
