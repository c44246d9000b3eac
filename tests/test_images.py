"""Every image file mode becomes RGB in [0, 1]; bad files give one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import featvis
from featvis.core.images import load_image, save_image


def test_grayscale_rgba_16bit_and_palette_are_converted(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    loaded = load_image(tmp_path / "gray.png")
    assert loaded.shape == (3, 8, 8) and torch.allclose(loaded[1], torch.from_numpy(gray / 255.0).float())

    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    loaded = load_image(tmp_path / "deep.png")
    assert torch.allclose(loaded[0], torch.from_numpy(deep / 65535.0).float(), atol=1e-6)

    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    loaded = load_image(tmp_path / "rgba.png")
    assert torch.allclose(loaded[:, 0, 0], torch.tensor([200 / 255, 0.0, 0.0]))
    assert torch.allclose(loaded[:, 3, 0], torch.ones(3)), "transparent pixels read as white"

    Image.fromarray(np.full((5, 5, 3), 60, np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "pal.gif")
    assert torch.allclose(load_image(tmp_path / "pal.gif"), torch.full((3, 5, 5), 60 / 255), atol=1 / 255)


def test_save_roundtrip_and_atomic(tmp_path):
    image = torch.rand(3, 10, 12)
    path = save_image(image, tmp_path / "out.png")
    assert torch.allclose(load_image(path), image, atol=0.5 / 255 + 1e-6)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_bad_images_give_one_line_errors(tmp_path):
    with pytest.raises(featvis.FeatvisError, match="image not found"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(featvis.FeatvisError, match=r"cannot read image .*junk.png") as info:
        load_image(tmp_path / "junk.png")
    assert "\n" not in str(info.value)
    good = tmp_path / "cut.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:200])
    with pytest.raises(featvis.FeatvisError, match="cannot read image"):
        load_image(good)


def test_a_huge_photo_is_shrunk_while_decoding(tmp_path):
    """load_image(max_side=...): a 4096x1024 photo comes back 2048x512, close to PIL's own resize of the
    full-size pixels (mean difference under 1/255), without ever holding the full float image."""
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1024, 0:4096]
    array = np.stack([(xx / 16) % 256, (yy / 4) % 256, rng.integers(0, 256, (1024, 4096))], -1).astype(np.uint8)
    PILImage.fromarray(array).save(tmp_path / "wide.png")
    small = featvis.load_image(tmp_path / "wide.png", max_side=2048)
    assert tuple(small.shape) == (3, 512, 2048)
    reference = np.asarray(PILImage.fromarray(array).resize((2048, 512), PILImage.Resampling.BICUBIC), dtype=np.float32) / 255
    assert float(np.abs(small.permute(1, 2, 0).numpy() - reference).mean()) < 1 / 255
    assert tuple(featvis.load_image(tmp_path / "wide.png").shape) == (3, 1024, 4096)  # no max_side: as it is
