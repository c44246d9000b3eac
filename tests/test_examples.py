"""`featvis examples`: top-k dataset examples per channel, streamed, resumable, shardable.

Ground truths independent of the engine: a brute-force sort for the running top-k; separate
batch-of-one forward passes (plain capture) for activations, units and rankings; the project's
exact receptive field and an autograd measurement for boxes; a photo planted among noise;
a single uninterrupted process for sharded (two real processes) and killed-and-resumed runs.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featvis
from featvis.examples import dataset_examples, sample_collection
from featvis.examples.topk import TopK
from examples_models import SLEEP_ENV, slow_cnn
from test_gallery import featvis_process, finish, run_cli

SLOW = f"{Path(__file__).resolve().parent / 'examples_models.py'}:slow_cnn"


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """28 random crops/flips of the sample photos (48 px, class subfolders) and one unreadable file."""
    root = tmp_path_factory.mktemp("collection")
    sample_collection(root, 28, size=48, seed=1)
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return root


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def crops_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


# --- the running top-k against a brute-force sort -------------------------------------------------
def test_topk_equals_sorting_everything_with_ties_by_index():
    generator = torch.Generator().manual_seed(0)
    values = torch.randint(0, 6, (50, 3), generator=generator).float()  # many ties
    values[7, 1] = float("nan")
    units = torch.randint(0, 9, (50, 3, 2), generator=generator)
    for batch in (1, 7, 50):
        top = TopK(3, 4)
        for start in range(0, 50, batch):
            index = torch.arange(start, min(start + batch, 50))
            top.update(values[index], units[index], index)
        for c in range(3):
            expected = sorted((i for i in range(50) if not torch.isnan(values[i, c])), key=lambda i: (-values[i, c], i))[:4]
            assert [i for _, i, _ in top.entries(c)] == expected
            assert [u for _, _, u in top.entries(c)] == [tuple(units[i, c].tolist()) for i in expected]


# --- real weights: separate forward passes, receptive fields, a planted photo ---------------------
def test_top_examples_agree_with_separate_forward_passes_and_receptive_fields(inceptionv1, collection, tmp_path):
    result = dataset_examples(inceptionv1, collection, "mixed3a,mixed4a_pre_relu", tmp_path, channels="0:4", k=3,
                              batch=8, workers=0, negative=True, progress=False)
    summary = result.summary
    paths = sorted(str(p) for p in collection.rglob("*.png"))
    assert summary["images"] == 28
    assert [s["path"] for s in summary["skipped"]] == [str(collection / "broken.jpg")]
    images = {p: featvis.load_image(p) for p in paths}
    with torch.no_grad():  # every image alone, plain capture
        acts = {p: featvis.capture(inceptionv1, inceptionv1.prepare(images[p]), ["mixed3a", "mixed4a_pre_relu"])
                for p in paths}
    field = featvis.receptive_field(inceptionv1, "mixed3a")
    for channel in range(4):
        peaks = {p: acts[p]["mixed3a"][0, channel].flatten().max(0) for p in paths}
        entries = summary["layers"]["mixed3a"][str(channel)]
        assert [e["path"] for e in entries] == sorted(paths, key=lambda p: (-float(peaks[p].values), p))[:3]
        for entry in entries:
            value, flat = peaks[entry["path"]]
            unit = (int(flat) // 28, int(flat) % 28)
            assert entry["activation"] == pytest.approx(float(value), rel=1e-4, abs=1e-4)
            assert tuple(entry["unit"]) == unit
            box = field.region(unit).clip(224, 224)
            assert entry["box"] == [box.y0, box.x0, box.y1, box.x1]
            crop = np.asarray(Image.open(tmp_path / entry["crop"]))
            prepared = inceptionv1.prepare(images[entry["path"]])[0, :, box.y0 : box.y1, box.x0 : box.x1]
            assert crop.shape == (box.height, box.width, 3)
            assert np.abs(crop.astype(float) - prepared.permute(1, 2, 0).numpy() * 255).max() <= 0.5 + 1e-3
        lows = {p: float(acts[p]["mixed4a_pre_relu"][0, channel].min()) for p in paths}
        negatives = summary["negative"]["mixed4a_pre_relu"][str(channel)]
        assert [e["path"] for e in negatives] == sorted(paths, key=lambda p: (lows[p], p))[:3]
        assert negatives[0]["activation"] == pytest.approx(lows[negatives[0]["path"]], rel=1e-4, abs=1e-4)
        assert negatives[0]["crop"].endswith("/n0.png")
    # the box holds every pixel the unit depends on (autograd measurement)
    entry = summary["layers"]["mixed3a"]["0"][0]
    x = inceptionv1.prepare(images[entry["path"]]).requires_grad_(True)
    y, xx = entry["unit"]
    with torch.enable_grad():
        featvis.capture(inceptionv1, x, ["mixed3a"], detach=False)["mixed3a"][0, 0, y, xx].backward()
    rows, cols = np.nonzero(x.grad[0].abs().sum(0).numpy())
    y0, x0, y1, x1 = entry["box"]
    assert rows.min() >= y0 and rows.max() < y1 and cols.min() >= x0 and cols.max() < x1
    assert read(tmp_path / "mixed3a.json")["channels"]["0"][0] == entry
    assert read(tmp_path / "examples.json") == summary


def test_planted_photo_is_the_top_example_among_noise(inceptionv1, coffee, tmp_path):
    generator = torch.Generator().manual_seed(0)
    noise = [torch.rand(3, 64, 64, generator=generator) for _ in range(10)]
    for n, image in enumerate(noise):
        featvis.save_image(image, tmp_path / "images" / f"noise{n}.png")
    featvis.save_image(coffee, tmp_path / "images" / "planted.png")
    photo = featvis.load_image(tmp_path / "images" / "planted.png")
    with torch.no_grad():
        photo_peaks = featvis.capture(inceptionv1, inceptionv1.prepare(photo), ["mixed4a"])["mixed4a"][0].flatten(1).max(1).values
        noise_peaks = featvis.capture(inceptionv1, torch.cat([inceptionv1.prepare(n) for n in noise]), ["mixed4a"])["mixed4a"]
    margin = photo_peaks - noise_peaks.flatten(2).max(2).values.max(0).values
    channel = int(margin.argmax())
    assert margin[channel] > 0
    result = dataset_examples(inceptionv1, tmp_path / "images", "mixed4a", tmp_path / "out", channels=str(channel), k=3,
                              batch=4, workers=1, progress=False)
    assert result.summary["layers"]["mixed4a"][str(channel)][0]["path"] == str(tmp_path / "images" / "planted.png")


# --- processes: two shards merged, kill -9 and resume, against one uninterrupted run --------------
ARGS = ["--layers", "conv2,conv1", "--k", "4", "--batch", "3", "--quiet"]


@pytest.fixture(scope="module")
def reference(collection, tmp_path_factory) -> Path:
    """One uninterrupted process over the whole collection (in this process, no decoding workers)."""
    out = tmp_path_factory.mktemp("reference")
    dataset_examples(slow_cnn(), collection, "conv2,conv1", out, k=4, batch=3, workers=0, progress=False)
    return out


def test_two_shard_processes_merged_equal_one_process(collection, reference, tmp_path, capsys):
    shards = [featvis_process("examples", SLOW, "--images", str(collection), "--out", str(tmp_path), "--workers", "1",
                              "--shard", f"{i}/2", *ARGS) for i in range(2)]
    for shard in shards:
        code, _, err = finish(shard)
        assert code == 0, err
    code, stdout, err = run_cli(capsys, "examples", "--merge", str(tmp_path), "--json", "--quiet", "--workers", "0")
    assert code == 0, err
    assert json.loads(stdout) == read(reference / "examples.json")
    assert read(tmp_path / "examples.json") == read(reference / "examples.json")
    assert crops_of(tmp_path) == crops_of(reference)


def test_killed_run_resumes_to_the_uninterrupted_result(collection, reference, tmp_path):
    process = featvis_process("examples", SLOW, "--images", str(collection), "--out", str(tmp_path), "--workers", "1",
                              "--checkpoint-every", "0", *ARGS, env={SLEEP_ENV: "0.15"})
    checkpoint = tmp_path / "shards" / "0-of-1.ckpt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.4)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and checkpoint.exists()
    assert not (tmp_path / "examples.json").exists()
    result = dataset_examples(slow_cnn(), collection, "conv2,conv1", tmp_path, k=4, batch=3, workers=0, progress=False)
    assert 0 < result.resumed_at < 29
    assert result.summary == read(reference / "examples.json")
    assert crops_of(tmp_path) == crops_of(reference)
    assert not checkpoint.exists()


def test_corrupt_checkpoint_is_ignored_with_a_warning(collection, reference, tmp_path):
    checkpoint = tmp_path / "shards" / "0-of-1.ckpt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"\x00garbage" * 10)
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        result = dataset_examples(slow_cnn(), collection, "conv2,conv1", tmp_path, k=4, batch=3, workers=0, progress=False)
    assert result.resumed_at == 0
    assert result.summary == read(reference / "examples.json")


# --- bad input: one line, exit 2, nothing a next run would trust -----------------------------------
def test_bad_input_one_line_exit_2(collection, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"nope")
    (unreadable / "b.jpg").write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{next(collection.rglob('*.png'))}\nmissing/photo.png\n")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = str(tmp_path / "out")
    cases = [
        (["--images", str(empty), "--layers", "conv1", "--out", out], "no image files"),
        (["--images", str(unreadable), "--layers", "conv1", "--out", out], "could be read"),
        (["--images", str(listing), "--layers", "conv1", "--out", out], "do not exist"),
        (["--images", str(collection), "--layers", "conv9", "--out", out], "unknown layer"),
        (["--images", str(collection), "--layers", "conv1", "--out", out, "--k", "0"], "--k must be"),
        (["--images", str(collection), "--layers", "conv1", "--out", str(blocker / "sub")], "cannot create folder"),
    ]
    for argv, message in cases:
        code, stdout, err = run_cli(capsys, "examples", SLOW, *argv, "--quiet", "--workers", "0")
        assert code == 2, (argv, err)
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert stdout == ""
    assert not list((tmp_path / "out").rglob("*.json")) and not list((tmp_path / "out").rglob("*.ckpt"))
    code, _, err = run_cli(capsys, "examples", "--merge", str(tmp_path / "out"))
    assert code == 2 and "no shard results" in err


# --- the gallery shows these examples ---------------------------------------------------------------
def test_gallery_patches_link_to_their_whole_photo_with_the_box(collection, tmp_path):
    from featvis.gallery import make_gallery

    model = slow_cnn()
    out = tmp_path / "g"
    with pytest.warns(UserWarning, match="skipping photo"):
        make_gallery(model, "conv2", out, channels="0:2", steps=2, size=32, images=collection, patches=2,
                     filters=False, progress=False)
    for channel in range(2):
        patches = read(out / "layers" / "conv2" / f"{channel}.json")["patches"]
        assert len(patches) == 2
        page = (out / "layers" / "conv2" / f"{channel}.html").read_text()
        for patch in patches:
            crop_link, full_link = (Path(patch[key]).relative_to("layers/conv2") for key in ("image", "full"))
            assert f'<a href="{full_link}"><img src="{crop_link}"' in page
            prepared = model.prepare(featvis.load_image(collection / patch["photo"]))[0]
            full = np.asarray(Image.open(out / patch["full"]), dtype=float) / 255
            y0, x0, y1, x1 = patch["box"]
            assert np.allclose(full[y0, x0:x1], [1.0, 0.1, 0.1], atol=1 / 255)  # the box's top edge, drawn in red
            outside = np.ones(full.shape[:2], bool)
            outside[y0:y1, x0:x1] = False
            assert np.abs(full[outside] - prepared.permute(1, 2, 0).numpy()[outside]).max() <= 0.5 / 255 + 1e-6
