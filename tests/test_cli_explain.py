"""`featvis explain`: a self-contained escaped page, JSON numbers against the exact logit change of a
linear head, and bad input as one line with exit code 2 before any work."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import torch

from featvis.cli import main
from featvis.core.images import load_image, save_image

NETS = """
import torch
from torch import nn

def toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 12, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 4))
"""


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def toy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS)
    photo = tmp_path / 'cup <b>&"x".png'
    save_image(torch.rand(3, 60, 80, generator=torch.Generator().manual_seed(0)), photo)
    return photo


def test_page_and_json(toy, tmp_path, capsys):
    code, out, err = _run(capsys, "explain", "nets.py:toy", str(toy), "--layer", "3", "--target", "2", "--groups", "3",
                          "--top", "4", "--from-layer", "1", "--steps", "1", "--size", "16", "--grid-step", "9",
                          "-o", str(tmp_path / "page.html"), "--figures", str(tmp_path / "figs"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["layer"] == "3" and report["target"]["index"] == 2 and len(report["groups"]) == 3
    assert len(report["dictionary"]["channels"]) == 4 and report["flow"]["from_layer"] == "1"
    h, w = report["grid"]["shape"]
    assert all(len(g["map"]) == h and len(g["map"][0]) == w and min(map(min, g["map"])) >= 0 for g in report["groups"])
    # independent ground truth: everything after layer 3 (the ReLU) is linear, so g · a = logit(a) - logit(0)
    spec = importlib.util.spec_from_file_location("nets", tmp_path / "nets.py")
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    net = nets.toy().eval()
    import featvis

    x = featvis.as_model(net).prepare(load_image(toy))
    with torch.no_grad():
        a = net[:4](featvis.as_model(net).normalize(x))
        change = float(net[4:](a)[0, 2] - net[4:](torch.zeros_like(a))[0, 2])
    assert report["attribution"]["total"] == pytest.approx(change, rel=1e-4, abs=1e-5)
    assert report["attribution"]["sum"] == pytest.approx(report["attribution"]["total"], rel=1e-9, abs=1e-9)
    page = (tmp_path / "page.html").read_text()
    assert "cup &lt;b&gt;&amp;&quot;x&quot;.png" in page and "<b>&" not in page  # the file name is escaped
    links = re.findall(r"(?:src|href|url)\s*[=(]\s*[\"']?([^\"' )>]*)", page)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)  # every image inline, nothing fetched
    assert len(links) == 1 + 4 + 1 + 3 + 1 + 3 + 3  # attribution, dictionary, grid, groups, their maps, flow icons
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["attribution.png", "grid.png", "groups.png"]
    assert report["paths"][0] == str(tmp_path / "page.html")


@pytest.mark.parametrize("argv, message", [
    (["--target", "espreso"], "unknown class label 'espreso'; closest: espresso"),
    (["--layer", "fc"], "layer 'fc' has no spatial map"),
    (["--groups", "600"], "600 groups asked but 'mixed4d' has 528 channels"),
    (["-o", "page.txt"], "the page must be an .html file"),
])
def test_bad_input_is_one_line_exit_2(inceptionv1, coffee, tmp_path, capsys, argv, message):
    photo = tmp_path / "coffee.png"
    save_image(coffee, photo)
    output = ["-o", str(tmp_path / "page.html")] if "-o" not in argv else []
    code, out, err = _run(capsys, "explain", "inceptionv1", str(photo), "--steps", "0", *output, *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "page.html").exists()
