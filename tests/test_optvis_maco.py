"""MACO, its transparency map, feature accentuation and the plausibility score, against independent
ground truth: numpy's FFT, finite differences, receptive fields, scipy's cosine distances and
activations measured afresh."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.spatial.distance
import torch
from torch import nn

import featvis
from featvis.cli import main
from featvis.optvis import render
from featvis.optvis.maco import MacoImage, natural_spectrum
from featvis.optvis.natural import photo_crops
from featvis.optvis.param import COLOR
from featvis.optvis.plausibility import plausibility


pytestmark = pytest.mark.usefixtures("one_thread")


def test_natural_spectrum_is_the_mean_fourier_magnitude_of_the_photos():
    crops = photo_crops(32).double().numpy()
    centred = crops - crops.mean(axis=(2, 3), keepdims=True)
    decorrelated = np.einsum("ij,bjhw->bihw", np.linalg.inv(COLOR.double().numpy()), centred)
    expected = np.abs(np.fft.rfft2(decorrelated, norm="ortho")).mean(0)
    np.testing.assert_allclose(natural_spectrum(32).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_maco_images_keep_the_natural_magnitude_whatever_the_phase():
    param = MacoImage([torch.Generator().manual_seed(i) for i in range(2)], 32)
    with torch.no_grad():
        for _ in range(2):
            spectrum = torch.fft.rfft2(param.raw().double(), norm="ortho").abs()
            # columns 1 .. 15 (0 and 16 are real-only in a real image's rfft2); row 0 col 0 is the mean, removed
            ratio = (spectrum[..., 1:16] / param.magnitude[..., 1:16].double()).flatten(1)
            assert float((ratio.std(1) / ratio.mean(1)).max()) < 1e-5  # equal up to each image's standardisation scale
            param.phase.add_(torch.randn(param.phase.shape))  # any other phase


def test_phase_gradient_matches_finite_differences():
    param = MacoImage([torch.Generator().manual_seed(0)], 8).double()
    phase = param.phase.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: torch.func.functional_call(param, {"phase": p}, ()), (phase,), eps=1e-6, atol=1e-5)


def _small_cnn() -> featvis.FeatvisModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
    return featvis.as_model(net, input_size=32, mean=(0.5,) * 3, std=(0.25,) * 3).freeze()


def test_transparency_lies_exactly_in_the_units_receptive_field():
    model = _small_cnn()
    (result,) = render(model, "3:2@6,20", param="maco", steps=6, size=32, transforms="none", natural=False, progress=False)
    field = featvis.receptive_field(model, "3").region((6, 20))  # theory, itself checked by measurement
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[field.y0 : field.y1, field.x0 : field.x1] = True
    assert result.alpha.shape == (32, 32) and float(result.alpha.max()) == 1.0
    assert float(result.alpha[~inside].abs().max()) == 0.0 and bool((result.alpha[inside] > 0).all())


def test_plausibility_is_the_mean_cosine_similarity_to_the_nearest_natural_crops():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
    model = featvis.as_model(net, input_size=32).freeze()
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    features = {}
    net[4].register_forward_hook(lambda m, i, o: features.setdefault("x", i[0]))
    with torch.no_grad():
        model(images)
        ours = features.pop("x").double().numpy()
        model(photo_crops(32))
        natural = features.pop("x").double().numpy()
    centre = natural.mean(0)
    nearest = np.sort(scipy.spatial.distance.cdist(ours - centre, natural - centre, metric="cosine"), axis=1)[:, :5]
    np.testing.assert_allclose(plausibility(model, images), 1 - nearest.mean(1), rtol=1e-5)


def test_a_photo_is_more_plausible_than_noise_to_googlenet(inceptionv1, coffee):
    noise = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    photo = inceptionv1.prepare(coffee).cpu()
    scores = plausibility(inceptionv1, torch.cat([photo, noise]))
    assert scores[0] > scores[1] + 0.1


@pytest.mark.parametrize("limit", [0.5, 0.05])
def test_accentuation_stays_within_the_distance_and_raises_the_unit(squeezenet, chelsea, limit):
    photo = torch.nn.functional.interpolate(chelsea[None, :, :, 75:375], size=(96, 96), mode="bilinear", antialias=True)[0]
    (result,) = render(squeezenet, "fire7:5", accentuate=photo, accentuate_distance=limit, steps=12, size=96,
                       natural=False, progress=False, precision="float32")
    scale = squeezenet.input_size  # the model sees images resized to max(size, input size)
    acts = featvis.capture(squeezenet, torch.nn.functional.interpolate(torch.stack([result.image, photo]), size=(scale, scale),
                                                                       mode="bilinear", antialias=True), ["fire7"])["fire7"]
    measured = float((acts[0] - acts[1]).norm() / acts[1].norm())
    assert measured <= limit * 1.001 and result.distance == pytest.approx(measured, rel=1e-3, abs=1e-5)
    if limit == 0.5:  # (0.05 keeps the image so close that the unit barely moves)
        assert float(acts[0, 5].mean()) > 2 * float(acts[1, 5].mean())  # the unit is raised above the photo's


def _error(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    return err


def test_bad_combinations_are_one_line_before_any_model_loads(tmp_path, capsys):
    photo = tmp_path / "p.png"
    featvis.save_image(torch.rand(3, 16, 16), photo)
    (tmp_path / "bad.png").write_text("not an image")
    model = "nonexistent_module_xyz:factory"  # would fail differently if it were loaded first
    assert "--param maco cannot start from a photo" in _error(capsys, "render", model, "a:0", "--param", "maco", "--init", str(photo), "-o", str(tmp_path / "o.png"))
    assert "--alpha needs a parameterisation" in _error(capsys, "render", model, "a:0", "--alpha", "-o", str(tmp_path / "o.png"))
    assert "cannot read image" in _error(capsys, "render", model, "a:0", "--accentuate", str(tmp_path / "bad.png"), "-o", str(tmp_path / "o.png"))
    assert "not both" in _error(capsys, "render", model, "a:0", "--accentuate", str(photo), "--init", str(photo), "-o", str(tmp_path / "o.png"))


def test_cli_maco_writes_the_alpha_png_and_reports_plausibility(squeezenet, tmp_path, capsys):
    code = main(["render", "squeezenet1_1", "fire5:3", "--param", "maco", "--alpha", "--steps", "3", "--size", "48",
                 "--out-dir", str(tmp_path), "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert code == 0 and set(rows[0]) >= {"ratio", "plausibility", "alpha"}
    assert rows[0]["alpha"] == str(tmp_path / "fire5_3_alpha.png") and 0 < rows[0]["plausibility"] <= 1
    alpha = featvis.load_image(rows[0]["alpha"])
    assert alpha.shape == featvis.load_image(rows[0]["path"]).shape and float(alpha.max()) == 1.0


def test_gallery_renders_with_maco_and_records_it(tmp_path):
    from featvis.gallery import make_gallery

    model = _small_cnn()
    make_gallery(model, "3", tmp_path, channels="0:2", steps=3, size=32, param="maco", filters=False, progress=False)
    data = json.loads((tmp_path / "layers" / "3" / "1.json").read_text())
    assert data["param"] == "maco" and data["spec"] == "3:1" and -1 <= data["plausibility"] <= 1
    image = featvis.load_image(tmp_path / data["image"])
    with torch.no_grad():
        measured = float(model.net((image[None] - model.mean) / model.std)[0, 1].mean())
    assert measured == pytest.approx(data["activation"], rel=0.03, abs=2e-3)
