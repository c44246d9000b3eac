"""`featvis circuit`: the JSON of the issue, one render batch for the figure, one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import featvis.optvis
from featvis.cli import main

from circuit_nets import PLANTED

NETS = PLANTED + '''

class Rolled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)
        self.b = nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.b(torch.roll(self.a(x), 1, -1))
'''


@pytest.fixture
def nets(tmp_path, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets.py").write_text(NETS)
    return "nets.py"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_json_has_the_issue_fields_strongest_first_and_the_planted_map(nets, capsys):
    code, out, _ = _run(capsys, "circuit", f"{nets}:Planted", "conv2:1", "--from", "conv1", "--to", "conv3", "--k", "3", "--json")
    data = json.loads(out)
    assert code == 0 and list(data) == ["unit", "inputs", "outputs"] and data["unit"] == "conv2:1"
    for side in (data["inputs"], data["outputs"]):
        assert all(list(c) == ["layer", "channel", "strength", "sum", "map"] for c in side)
        assert [c["strength"] for c in side] == sorted((c["strength"] for c in side), reverse=True)
    assert data["inputs"][0] == {"layer": "conv1", "channel": 5, "strength": 0.5, "sum": 0.5, "map": [[0.5]]}
    assert [c["strength"] for c in data["inputs"][1:]] == [0.0, 0.0]  # conv2:1 reads nothing else
    top = data["outputs"][0]
    assert (top["layer"], top["channel"]) == ("conv3", 2)
    assert top["map"] == [[0.0, 1.0, -1.0], [0.0, 2.0, -2.0], [0.0, 1.0, -1.0]]


def test_figure_renders_every_visualization_in_one_batch(nets, capsys, monkeypatch, tmp_path):
    calls = []
    real = featvis.optvis.render

    def counting(model, specs, *args, **kwargs):
        calls.append((list(specs), kwargs["batch"]))
        return real(model, specs, *args, **kwargs)

    monkeypatch.setattr(featvis.optvis, "render", counting)
    code, out, _ = _run(capsys, "circuit", f"{nets}:Planted", "conv2:1", "--from", "conv1", "--to", "conv3", "--k", "2",
                        "-o", "circuit.png", "--steps", "2", "--size", "16")
    assert code == 0 and out.strip().endswith("wrote circuit.png")
    assert calls == [(["conv2:1", "conv1:5", calls[0][0][2], "conv3:2", calls[0][0][4]], 5)]
    with Image.open(tmp_path / "circuit.png") as image:
        assert image.format == "PNG" and image.width > image.height > 100


@pytest.mark.parametrize("argv, message", [
    (["{nets}:Planted", "conv1:0", "--from", "conv3"], "'conv1' is not downstream of 'conv3'"),
    (["{nets}:Rolled", "b:0", "--from", "a"], "cannot follow the graph from 'a' to 'b'"),
    (["torchvision:resnet18", "avgpool:0", "--from", "layer4"], "'avgpool' has no spatial positions"),
    (["{nets}:Planted", "conv3", "--from", "conv1"], "bad unit 'conv3'"),
    (["{nets}:Planted", "conv3:9", "--from", "conv1"], "channel 9 is out of range for layer 'conv3'"),
    (["{nets}:Planted", "conv3:0", "--from", "conv1", "-o", "circuit.gif"], "use a .png, .svg or .pdf"),
])
def test_bad_input_is_one_line_and_exit_code_2(nets, capsys, argv, message):
    code, out, err = _run(capsys, "circuit", *(a.format(nets=nets) for a in argv))
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err
