"""`featvis dictionary`, `--dictionary` on the other commands, `featvis describe`, and two torchrun processes
training the dictionary one process trains."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from featvis.cli import main
from featvis.dictionary import load_dictionary
from dictionary_nets import DIRECTIONS, planted_photos

MODEL = f"{Path(__file__).parent / 'dictionary_nets.py'}:planted_model"
TRAIN = ["--layer", "mix", "--features", "64", "--k", "2", "--samples", "5120", "--steps", "300", "--batch", "512",
         "--lr", "3e-3", "--workers", "0", "--image-batch", "16"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("planted_cli") / "photos"
    planted_photos(root, 80, seed=3)
    return root


@pytest.fixture(scope="module")
def trained(photos) -> tuple[Path, dict]:
    """One `featvis dictionary --json` run (in this process)."""
    out = photos.parent / "dictionary"
    stdout = io.StringIO()  # capsys is per test: this module's fixture reads stdout itself
    with contextlib.redirect_stdout(stdout):
        code = main(["dictionary", MODEL, "--images", str(photos), *TRAIN, "--out", str(out), "--json", "--quiet"])
    assert code == 0
    return out, json.loads(stdout.getvalue())


def test_json_reports_the_fields_and_the_folder_loads(trained):
    out, report = trained
    assert {"layer", "features", "k", "samples", "fvu", "l0", "dead", "loss_recovered", "agreement", "out"} <= set(report)
    assert (report["layer"], report["features"], report["k"], report["samples"], report["out"]) == ("mix", 64, 2, 5120, str(out))
    assert 0 <= report["fvu"] < 0.2 and report["l0"] <= 2 and 0 < report["loss_recovered"] <= 1
    counts = (load_dictionary(out).decoder.abs() >= 0.3).sum(0).tolist()  # features loading on each neuron
    assert report["polysemanticity"] == counts and len(counts) == 16
    dictionary = load_dictionary(out)
    assert dictionary.info["fvu"] == report["fvu"] and dictionary.name == "mix_features"
    assert not list(out.glob(".samples*")), "the sampling checkpoint is removed once the dictionary is written"


def test_every_command_takes_the_features_as_a_layer(trained, photos, tmp_path, capsys):
    out, _ = trained
    code, text, err = run_cli(capsys, "layers", MODEL, "--dictionary", str(out), "--json")
    assert code == 0, err
    names = [row["name"] for row in json.loads(text)]
    assert names.index("mix_features") == names.index("mix") + 1  # after the block that holds it
    code, text, err = run_cli(capsys, "render", MODEL, "mix_features:3", "mix_features:3@4,4", "-mix_features_pre_relu:3",
                              "--dictionary", str(out), "--steps", "8", "--size", "32", "--out-dir", str(tmp_path / "r"),
                              "--json", "--quiet")
    assert code == 0, err
    assert len(list((tmp_path / "r").glob("*.png"))) == 3
    code, text, err = run_cli(capsys, "gallery", MODEL, "--layers", "mix_features", "--channels", "0:2", "--diversity", "2",
                              "--dictionary", str(out), "--steps", "4", "--size", "32", "-o", str(tmp_path / "g"),
                              "--json", "--quiet")
    assert code == 0, err
    assert (tmp_path / "g" / "layers" / "mix_features" / "1.html").exists()
    code, text, err = run_cli(capsys, "examples", MODEL, "--images", str(photos), "--layers", "mix_features",
                              "--channels", "0:4", "--k", "3", "--out", str(tmp_path / "ex"), "--workers", "0",
                              "--dictionary", str(out), "--json", "--quiet")
    assert code == 0, err
    assert set(json.loads(text)["layers"]["mix_features"]) == {"0", "1", "2", "3"}
    code, text, err = run_cli(capsys, "circuit", MODEL, "mix_features:3", "--from", "relu", "--to", "head",
                              "--dictionary", str(out), "--k", "2", "--json", "--quiet")
    assert code == 0, err
    assert [c["layer"] for c in json.loads(text)["outputs"]] == ["head", "head"]
    code, text, err = run_cli(capsys, "describe", MODEL, "mix_features:3", "mix:5", "--dictionary", str(out), "--json",
                              "--quiet")
    assert code == 0, err
    feature, neuron = json.loads(text)
    assert feature["promotes"] and "promotes" in feature["description"]
    assert neuron["dictionary"]["polysemanticity"] == len(neuron["dictionary"]["features"])


@pytest.mark.parametrize("extra, message", [
    (["--layer", "mix", "--features", "8", "--k", "8"], "--k must be at least 1 and below --features"),
    (["--layer", "mix", "--features", "64", "--samples", "10"], "--samples must be between"),
    (["--layer", "mix", "--features", "4000", "--samples", "3000"], "--samples (3000) is below --features"),
    (["--layer", "nope"], "unknown layer 'nope'"),
])
def test_bad_input_is_one_line_and_exit_2(photos, tmp_path, capsys, extra, message):
    code, out, err = run_cli(capsys, "dictionary", MODEL, "--images", str(photos), *extra, "--out", str(tmp_path / "d"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "d" / "dictionary.pt").exists()


def test_a_layer_without_channels_is_refused(user_models, photos, tmp_path, capsys):
    code, out, err = run_cli(capsys, "dictionary", f"{user_models / 'nets.py'}:tiny", "--input-size", "32", "--images",
                             str(photos), "--layer", "fc", "--out", str(tmp_path / "d"))
    errors = [line for line in err.splitlines() if not line.startswith("featvis: warning:")]  # Tiny warns when it runs
    assert code == 2 and out == "" and len(errors) == 1 and "Traceback" not in err, err
    assert "without channels at positions" in errors[0]


def test_damaged_dictionary_is_one_line_on_any_command(trained, tmp_path, capsys):
    out, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("dictionary.json", "dictionary.pt"):
        (bad / name).write_bytes((out / name).read_bytes())
    with open(bad / "dictionary.pt", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\x01\x02")
    code, text, err = run_cli(capsys, "layers", MODEL, "--dictionary", str(bad))
    assert code == 2 and text == "" and "does not match the SHA-256" in err and len(err.strip().splitlines()) == 1


def test_two_torchrun_processes_train_the_dictionary_one_process_trains(trained, photos, tmp_path):
    out, _ = trained
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "featvis", "dictionary", MODEL, "--images", str(photos), *TRAIN,
                          "--out", str(tmp_path / "two"), "--json", "--quiet"],
                         env=environ, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    one, two = load_dictionary(out), load_dictionary(tmp_path / "two")
    assert two.info["processes"] == 2 and two.info["samples"] == one.info["samples"]
    for name in ("encoder", "encoder_bias", "decoder", "decoder_bias"):
        assert torch.allclose(getattr(one, name), getattr(two, name), atol=1e-4), name
    assert abs(one.info["fvu"] - two.info["fvu"]) < 1e-4
    assert int(((DIRECTIONS @ two.decoder.T).max(1).values >= 0.9).sum()) >= 20  # it learned (300 steps only)


def test_serve_has_feature_pages_linked_to_their_neurons(trained, photos, tmp_path):
    pytest.importorskip("starlette", reason="featvis serve needs the serve extra: pip install 'featvis[serve]'")
    from collections import Counter

    import featvis
    from dictionary_nets import planted_model
    from test_serve import Serve, fragment

    out, _ = trained
    dictionary = load_dictionary(out)
    serve = Serve(tmp_path, tmp_path / "cache", "--images", str(photos), "--dictionary", str(out), model=MODEL)
    try:
        status, body, _ = serve.get("/layer/mix_features/3")
        assert status == 200
        section = body.decode().split('id="dictionary"', 1)[1].split("</div>", 1)[0]
        neurons = [c for c in dictionary.decoder[3].abs().argsort(descending=True).tolist()
                   if abs(dictionary.decoder[3, c]) >= 0.3]
        assert [int(c) for c in re.findall(r'href="/layer/mix/(\d+)"', section)] == neurons
        status, body, _ = serve.get("/layer/mix/5")
        count = int((dictionary.decoder[:, 5].abs() >= 0.3).sum())
        assert status == 200 and f"{count} features of the dictionary load on this neuron" in body.decode()
        examples = fragment(serve, "/fragment/examples/mix_features/3")
        names = re.findall(r'<div class="muted">(photo\d+\.png)</div>', examples)
        model = planted_model()
        predicted = Counter(model.classify([featvis.load_image(photos / name)], top=1)[0][0][1] for name in names)
        assert len(names) == 9 and all(f"{label} ({n}/9)" in examples for label, n in predicted.items())
        # circuits: a feature reads its layer and feeds what its layer feeds; the layer's own neighbours stay the network's
        assert "Strongest inputs from mix<" in fragment(serve, "/fragment/circuits/mix_features/3")
        assert "Strongest outputs to head<" in fragment(serve, "/fragment/circuits/mix_features/3")
        assert "Strongest outputs to head<" in fragment(serve, "/fragment/circuits/mix/5")
        keys = serve.keys("/layer/mix_features/3")
        serve.wait(keys[0], timeout=120)
    finally:
        serve.stop()
