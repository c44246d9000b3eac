"""`featvis filters`, `featvis maps` and `featvis saliency` from the shell: files, JSON, one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from featvis.cli import main


@pytest.fixture(scope="module")
def coffee_png(tmp_path_factory, coffee) -> str:
    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray((coffee.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return str(path)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_saliency_json_and_figure(weights_dir, coffee_png, tmp_path, capsys):
    output = tmp_path / "map.png"
    code, out, err = _run(capsys, "saliency", "inceptionv1", coffee_png, "--method", "gradcam", "--target", "espresso",
                          "-o", str(output), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert list(report) == ["method", "target", "path", "deletion_auc", "insertion_auc", "sanity"]
    assert report["method"] == "gradcam" and report["sanity"] == []
    assert report["target"]["index"] == 967 and report["target"]["label"] == "espresso"
    assert report["target"]["prob"] == pytest.approx(0.90, abs=0.02)  # SOURCE.md
    assert report["path"] == str(output) and output.read_bytes().startswith(b"\x89PNG")
    assert 0 <= report["deletion_auc"] < report["insertion_auc"] <= 1


def test_saliency_with_sanity_check(weights_dir, coffee_png, tmp_path, capsys):
    output = tmp_path / "map.svg"
    code, out, err = _run(capsys, "saliency", "inceptionv1", coffee_png, "--method", "saliency", "--sanity",
                          "-o", str(output), "--json")
    assert code == 0, err
    sanity = json.loads(out)["sanity"]
    assert [step["layer"] for step in sanity][:3] == ["fc", "inception5b", "inception5a"]
    assert [step["depth"] for step in sanity] == list(range(1, 14))
    assert set(sanity[0]) == {"depth", "layer", "spearman", "spearman_abs", "ssim"}
    assert abs(sanity[-1]["spearman"]) < 0.2  # fully randomized: the gradient map is unrelated
    assert output.read_text().lstrip().startswith("<?xml")


def test_saliency_text_output(weights_dir, coffee_png, tmp_path, capsys):
    code, out, _ = _run(capsys, "saliency", "inceptionv1", coffee_png, "--method", "ixg", "-o", str(tmp_path / "m.pdf"))
    assert code == 0
    assert out.splitlines()[0].startswith(f"wrote {tmp_path / 'm.pdf'}: input x gradient for 'espresso' (967)")
    assert (tmp_path / "m.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "saliency", "--target", "espreso"], "unknown class label 'espreso'; closest: espresso"),
        (["--method", "gradcam", "--layer", "fc"], "layer 'fc' has no spatial output"),
        (["--method", "gradcam", "--layer", "mixed9z"], "unknown layer 'mixed9z'"),
    ],
)
def test_saliency_errors_are_one_line(weights_dir, coffee_png, tmp_path, capsys, extra, message):
    output = tmp_path / "map.png"
    code, out, err = _run(capsys, "saliency", "inceptionv1", coffee_png, *extra, "-o", str(output))
    assert code == 2 and out == ""
    assert err.startswith("featvis: error: ") and message in err and err.count("\n") == 1
    assert not output.exists()


def test_unreadable_image_and_bad_extension(tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    code, _, err = _run(capsys, "saliency", "inceptionv1", str(broken), "-o", str(tmp_path / "map.png"))
    assert code == 2 and err.startswith(f"featvis: error: cannot read image {broken}") and err.count("\n") == 1
    code, _, err = _run(capsys, "maps", "inceptionv1", "mixed4a", str(broken), "-o", str(tmp_path / "maps.jpg"))
    assert code == 2 and "use a .png, .svg or .pdf file name" in err


def test_filters_command(weights_dir, tmp_path, capsys):
    output = tmp_path / "filters.png"
    code, out, err = _run(capsys, "filters", "inceptionv1", "conv2d0", "-o", str(output), "--json")
    assert code == 0, err
    assert json.loads(out) == {"path": str(output), "layer": "conv2d0", "module": "conv1.conv", "shape": [64, 3, 7, 7]}
    assert output.read_bytes().startswith(b"\x89PNG")
    code, _, err = _run(capsys, "filters", "inceptionv1", "mixed3a", "-o", str(tmp_path / "f.png"))
    assert code == 2 and "holds 6 convolutions" in err


def test_maps_command(weights_dir, coffee_png, tmp_path, capsys):
    output = tmp_path / "maps.png"
    code, out, err = _run(capsys, "maps", "inceptionv1", "mixed4a", coffee_png, "--channels", "1,5,9", "-o", str(output),
                          "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["channels"] == [1, 5, 9] and report["shape"] == [512, 14, 14] and output.exists()
    code, out, _ = _run(capsys, "maps", "inceptionv1", "mixed4a", coffee_png, "--top", "4", "-o", str(output), "--json")
    report = json.loads(out)
    assert len(report["channels"]) == 4 and report["mean"] == sorted(report["mean"], reverse=True)
    code, out, _ = _run(capsys, "maps", "inceptionv1", "mixed3a", coffee_png, "--overlay", "7", "-o", str(output))
    assert code == 0 and "channels 7 of 256" in out
    with pytest.raises(SystemExit) as exit_info:  # argparse: --top and --channels exclude each other
        main(["maps", "inceptionv1", "mixed4a", coffee_png, "--top", "4", "--channels", "1", "-o", str(output)])
    assert exit_info.value.code == 2
    code, _, err = _run(capsys, "maps", "inceptionv1", "mixed4a", coffee_png, "--channels", "600", "-o", str(output))
    assert code == 2 and "channel 600 is out of range" in err
