"""`featvis gallery --circuits`: channel pages list the planted strongest inputs and outputs, linked
to their pages, with weight maps coloured on matplotlib's red/blue scale."""

from __future__ import annotations

import json
import re

from featvis.cli import main

from circuit_nets import PLANTED

NETS = PLANTED


def _section(page: str, title: str) -> str:
    start = page.index(title)
    end = page.find("<h2", start + 1)
    return page[start : end if end > 0 else None]


def test_channel_pages_show_planted_connections_linked_with_weight_maps(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS)
    argv = ["gallery", "nets.py:Planted", "--layers", "conv2,conv1,conv3", "--out", "g", "--steps", "1", "--size", "16",
            "--circuits", "2", "--quiet", "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["made"] == 8 + 6 + 4 + 18 + 1  # images, circuits, the filters

    page = (tmp_path / "g/layers/conv2/1.html").read_text()
    inputs = _section(page, "Strongest inputs from conv1")
    first = inputs[: inputs.index("</svg>")]
    assert 'href="../conv1/5.html"' in first and "conv1:5" in first  # the planted input, first, linked
    assert '<rect x="0" y="0" width="1" height="1" fill="#67001f">' in first  # 1x1 map at the maximum: darkest red
    outputs = _section(page, "Strongest outputs to conv3")
    planted = outputs[: outputs.index("</svg>")]
    assert 'href="../conv3/2.html"' in planted
    fills = re.findall(r'<rect x="(\d)" y="(\d)" width="1" height="1" fill="(#[0-9a-f]{6})">', planted)
    colour = {(int(y), int(x)): fill for x, y, fill in fills}
    # matplotlib's RdBu_r: +max is #67001f, -max is #053061, zero the middle (0.5) colour #f7f6f6
    assert colour[1, 1] == "#67001f" and colour[1, 2] == "#053061" and colour[0, 0] == colour[2, 0] == "#f7f6f6"

    first_layer = (tmp_path / "g/layers/conv1/5.html").read_text()
    assert "Strongest inputs" not in first_layer and "Strongest outputs to conv2" in first_layer
    data = json.loads((tmp_path / "g/layers/conv3/2.json").read_text())
    assert data["circuits"]["inputs"][0]["channel"] == 1 and data["circuits"]["outputs"] == []

    assert main(argv) == 0  # a rerun skips everything, circuits included
    assert json.loads(capsys.readouterr().out)["made"] == 0
