"""`featvis gallery`: pages and numbers, nothing lost and nothing redone, shards, escaping, bad input.

Everything runs on a tiny CNN defined here (also loadable as ``tests/test_gallery.py:tiny_cnn``
by the subprocesses) with a handful of optimisation steps, so the whole module stays fast.
Ground truths are independent of the gallery code: receptive-field boxes from the textbook
formula for this architecture, activations recomputed with plain torch, the link check with
Python's HTML parser, and byte-for-byte agreement between galleries made in different ways.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import featvis
from featvis.optvis.plausibility import plausibility
from featvis.cli import main
from featvis.gallery import make_gallery, parse_channels, parse_shard, rebuild_index, shard_from_env, slug
from featvis.core.plan import Layer, plan_units, shard_units
from featvis._util.html import tag
from featvis.optvis import compute_dtype

HERE = Path(__file__).resolve()
TINY = f"{HERE}:tiny_cnn"
FAST = ["--steps", "4", "--size", "32", "--quiet"]


def tiny_cnn() -> featvis.FeatvisModel:
    """conv1 (5x5, stride 2, pad 2) -> ReLU -> conv2 (3x3, pad 1) -> ReLU -> pool -> fc, 32 px input."""
    torch.manual_seed(0)
    net = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 8, 5, stride=2, padding=2), relu1=nn.ReLU(),
        conv2=nn.Conv2d(8, 6, 3, padding=1), relu2=nn.ReLU(),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(), fc=nn.Linear(6, 4),
    ))
    return featvis.FeatvisModel(net, name="tiny", input_size=32).freeze()


# --- helpers -------------------------------------------------------------------------------------
class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, name, attrs):
        self.tags.append(name)
        self.links += [(name, value) for key, value in attrs if key in ("src", "href")]

    def handle_data(self, data):
        self.text.append(data)


def parse_page(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def check_links(root: Path) -> int:
    """Every src/href of every page resolves to a file of the gallery; returns how many were checked."""
    from urllib.parse import unquote, urlparse

    count = 0
    for page in root.rglob("*.html"):
        for element, link in parse_page(page).links:
            parsed = urlparse(link)
            assert not parsed.scheme and not parsed.netloc, f"{page}: non-local link {link}"
            target = (page.parent / unquote(parsed.path)).resolve()
            assert target.is_file(), f"{page.relative_to(root)}: <{element}> {link} is missing"
            assert root.resolve() in target.parents, f"{page}: {link} leaves the gallery"
            count += 1
    return count


def channel_json(root: Path, layer: str, channel: int) -> dict:
    return json.loads((root / "layers" / slug(layer) / f"{channel}.json").read_text())


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()}


def records(root: Path) -> dict[tuple, dict]:
    found = {}
    for manifest in (root / "manifests").glob("*.json"):
        for record in json.loads(manifest.read_text())["records"]:
            found[(record["layer"], record["channel"], record["kind"])] = record
    return found


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def featvis_process(*argv: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """The CLI in its own process, one torch thread (two shards share this machine's cores)."""
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "featvis", *argv], env=environ, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def manual_acts(model: featvis.FeatvisModel, image: torch.Tensor, upto: str) -> torch.Tensor:
    """Activations after module ``upto`` of the tiny net, with plain torch (no featvis probe)."""
    x = (image[None] - model.mean) / model.std
    for name, module in model.net.named_children():
        x = module(x)
        if name == upto:
            return x[0]
    raise KeyError(upto)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Three small photos, a text file (not an image: left out) and a broken JPEG (skipped with a warning)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee", "astronaut"):
        image = Image.fromarray(getattr(data, name)()[..., :3])
        image.thumbnail((96, 96))
        image.save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not a photo")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, photos) -> tuple[Path, str]:
    """One full gallery: two layers, 3 channels each, negatives, diversity pairs, photo patches, filters."""
    out = tmp_path_factory.mktemp("gallery") / "g"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["gallery", TINY, "--layers", "conv1,conv2", "--channels", "0:3", "--out", str(out), "--batch", "2",
                     "--negative", "--diversity", "2", "--images", str(photos), "--patches", "2", *FAST])
    assert code == 0, err.getvalue()
    return out, err.getvalue()


# --- the gallery's content --------------------------------------------------------------------------
def test_gallery_pages_links_and_warnings(gallery):
    out, err = gallery
    assert "featvis: warning: skipping photo: cannot read image" in err
    assert "broken.jpg" in err
    assert check_links(out) > 50
    index = parse_page(out / "index.html")
    assert [link for _, link in index.links if re.fullmatch(r"layers/[^/]+\.html", link)] == ["layers/conv1.html", "layers/conv2.html"]
    text = "".join(index.text)
    assert text.index("conv1") < text.index("conv2") and "3 of 6" in text and "3 of 8" in text
    for layer in ("conv1", "conv2"):
        for c in range(3):
            page = out / "layers" / layer / f"{c}.html"
            assert page.is_file() and f"{layer}:{c}" in "".join(parse_page(page).text)
    assert not (out / "layers" / "conv1" / "3.html").exists()


def test_channel_json_numbers_match_an_independent_measurement(gallery):
    out, _ = gallery
    model = tiny_cnn()
    for layer in ("conv1", "conv2"):
        for c in range(3):
            data = channel_json(out, layer, c)
            assert (data["spec"], data["seed"], data["steps"], data["size"], data["batch"]) == (f"{layer}:{c}", 0, 4, 32, 2)
            assert data["precision"] == str(compute_dtype("auto", model)).removeprefix("torch.")
            assert data["layer"] == layer and data["model"] == "tiny"
            assert data["ratio"] == pytest.approx(data["activation"] / data["natural_max"])
            # the PNG, read back, drives the channel as recorded (8-bit rounding aside)
            image = featvis.load_image(out / data["image"])
            assert image.shape == (3, 32, 32)
            mean = float(manual_acts(model, image, layer)[c].mean())
            assert mean == pytest.approx(data["activation"], rel=0.03, abs=2e-3)
            assert data["plausibility"] == pytest.approx(plausibility(model, image[None])[0], abs=0.02)
            negative = data["negative"]
            assert negative["spec"] == f"-{layer}:{c}"
            neg_image = featvis.load_image(out / negative["image"])
            assert -float(manual_acts(model, neg_image, layer)[c].mean()) == pytest.approx(
                negative["activation"], rel=0.03, abs=2e-3)
            div = data["diversity"]
            assert len(div["images"]) == 2 and len(set(div["images"])) == 2
            pair = [featvis.load_image(out / p) for p in div["images"]]
            assert not torch.equal(pair[0], pair[1])
            for image, value in zip(pair, div["activations"]):
                assert float(manual_acts(model, image, layer)[c].mean()) == pytest.approx(value, rel=0.03, abs=2e-3)


def test_patches_are_receptive_fields_of_the_strongest_units(gallery, photos):
    """Boxes from the textbook formula: conv1 r=5, S=2, P=2; conv2 r=5+2*2=9, S=2, P=2+1*2=4."""
    out, _ = gallery
    model = tiny_cnn()
    prepared = {p.name: model.prepare(featvis.load_image(p))[0] for p in photos.glob("*.png")}
    geometry = {"conv1": (5, 2, 2), "conv2": (9, 2, 4)}
    for layer, (size, stride, pad) in geometry.items():
        acts = {name: manual_acts(model, image, layer) for name, image in prepared.items()}
        for c in range(3):
            patches = channel_json(out, layer, c)["patches"]
            peaks = sorted(((float(a[c].max()), name) for name, a in acts.items()), reverse=True)
            assert [p["photo"] for p in patches] == [name for _, name in peaks[:2]]
            for patch, (peak, name) in zip(patches, peaks):
                assert patch["activation"] == pytest.approx(peak, rel=1e-5, abs=1e-6)
                y, x = patch["unit"]
                assert float(acts[name][c, y, x]) == pytest.approx(peak, rel=1e-5, abs=1e-6)
                expected = [max(0, stride * y - pad), max(0, stride * x - pad),
                            min(32, stride * y - pad + size), min(32, stride * x - pad + size)]
                assert patch["box"] == expected
                y0, x0, y1, x1 = expected
                crop = np.asarray(featvis.core.images.to_pil(prepared[name][:, y0:y1, x0:x1]))
                assert np.array_equal(np.asarray(Image.open(out / patch["image"]).convert("RGB")), crop)


def test_descriptions_are_the_summed_logit_gradients_and_the_classes_of_the_patches(gallery, photos):
    """Each channel page says which classes the channel promotes (autograd over the readable photos) and what the
    model classifies its patches' photos as."""
    out, _ = gallery
    model = tiny_cnn()
    images = torch.cat([model.prepare(featvis.load_image(p)) for p in sorted(photos.glob("*.png"))])
    acts = featvis.capture(model, images, ["conv2"])["conv2"].requires_grad_()
    logits = model.net.fc(model.net.flat(model.net.pool(model.net.relu2(acts))))
    rises = torch.stack([torch.autograd.grad(logits[:, j].sum(), acts, retain_graph=True)[0].sum((2, 3)).mean(0)
                         for j in range(4)])  # [classes, channels]
    for c in range(3):
        description = channel_json(out, "conv2", c)["description"]
        promoted = [entry["index"] for entry in description["promotes"]]
        assert promoted == rises[:, c].argsort(descending=True).tolist()
        assert description["promotes"][0]["value"] == pytest.approx(float(rises[:, c].max()), rel=1e-4, abs=1e-6)
        classes = [model.classify([featvis.load_image(photos / p["photo"])], top=1)[0][0][0]
                   for p in channel_json(out, "conv2", c)["patches"]]
        assert sum(entry["count"] for entry in description["seen_as"]) == len(classes) == 2
        assert {entry["index"] for entry in description["seen_as"]} == set(classes)
        page = (out / "layers" / "conv2" / f"{c}.html").read_text()
        assert 'id="description"' in page and "promotes" in page


def test_filters_are_the_first_layer_kernels_on_rgb(gallery):
    """conv1 reads (x - mean) / std, so its kernels on RGB [0, 1] are W / std per input channel."""
    out, _ = gallery
    model = tiny_cnn()
    record = records(out)[("conv1", None, "filters")]
    weight = model.net.conv1.weight.detach() / model.std.view(1, 3, 1, 1)
    expected = 0.5 + 0.5 * weight / weight.abs().amax(dim=(1, 2, 3), keepdim=True)
    images = record["result"]["images"]
    assert len(images) == 8
    for kernel, rel in zip(expected, images):
        png = np.asarray(Image.open(out / rel).convert("RGB"), dtype=np.float32) / 255
        assert png.shape == (5, 5, 3)
        assert np.abs(png - kernel.permute(1, 2, 0).numpy()).max() <= 0.5 / 255 + 1e-6


# --- nothing lost, nothing redone -----------------------------------------------------------------
def test_rerun_redoes_nothing(gallery, photos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "g"
    shutil.copytree(gallery[0], out)
    before = snapshot(out)

    def no_render(*args, **kwargs):
        raise AssertionError("a finished gallery was rendered again")

    monkeypatch.setattr("featvis.gallery.job.render", no_render)
    code, stdout, _ = run_cli(capsys, "gallery", TINY, "--layers", "conv1,conv2", "--channels", "0:3", "--out", str(out),
                              "--batch", "2", "--negative", "--diversity", "2", "--images", str(photos), "--patches", "2",
                              "--json", *FAST)
    assert code == 0
    report = json.loads(stdout)
    # filters + (positive, negative, diversity, patches, description) per channel
    assert report["made"] == 0 and report["skipped"] == 1 + 2 * 3 * 5
    assert snapshot(out) == before  # not one file rewritten, pages included


def test_settings_change_rerenders_only_what_depends_on_it(gallery, photos, tmp_path, capsys):
    out = tmp_path / "g"
    shutil.copytree(gallery[0], out)
    old = records(out)
    before = snapshot(out)
    code, stdout, _ = run_cli(capsys, "gallery", TINY, "--layers", "conv2", "--channels", "0:3", "--out", str(out),
                              "--seed", "1", "--batch", "2", "--negative", "--diversity", "2", "--images", str(photos),
                              "--patches", "2", "--json", *FAST)
    assert code == 0 and json.loads(stdout)["made"] == 3 * 3  # positive, negative, diversity of 3 channels
    new = records(out)
    for key, record in new.items():
        changed = key[0] == "conv2" and key[2] in ("positive", "negative", "diversity")
        assert (record != old[key]) == changed, key
        if changed:
            assert record["settings"]["seed"] == 1 and not set(record["files"]) & set(old[key]["files"])
            assert all(not (out / rel).exists() for rel in old[key]["files"])  # replaced files are gone
        else:
            assert all(before[rel][0] == (out / rel).stat().st_mtime_ns for rel in record["files"])
    assert channel_json(out, "conv2", 1)["seed"] == 1 and channel_json(out, "conv1", 1)["seed"] == 0
    assert check_links(out) > 50


def test_damaged_file_is_made_again_identically(gallery, tmp_path, capsys):
    out = tmp_path / "g"
    shutil.copytree(gallery[0], out)
    image = out / channel_json(out, "conv2", 1)["image"]
    original = image.read_bytes()
    image.write_bytes(original[: len(original) // 2])
    code, stdout, _ = run_cli(capsys, "gallery", TINY, "--layers", "conv2", "--channels", "1", "--out", str(out),
                              "--json", *FAST)
    assert code == 0 and json.loads(stdout)["made"] == 1
    assert image.read_bytes() == original


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """conv2 channels 0..5, one process, uninterrupted: what shards and resumed runs must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "g"
    code, _, err = finish(featvis_process("gallery", TINY, "--layers", "conv2", "--out", str(out), "--batch", "1",
                                          "--steps", "200", "--size", "32", "--quiet"))
    assert code == 0, err
    return out


def same_images(a: Path, b: Path) -> None:
    for c in range(6):
        left, right = channel_json(a, "conv2", c), channel_json(b, "conv2", c)
        assert (a / left["image"]).read_bytes() == (b / right["image"]).read_bytes(), f"channel {c}"
        assert left["activation"] == right["activation"]


def wait_for_records(out: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if len(records(out)) >= count:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"the gallery process did not record {count} items in time: {process.poll()}")


def test_no_broken_link_between_any_two_writes_of_the_site(gallery, tmp_path, monkeypatch):
    """A kill can land between any two page writes: after each one, every link of every page resolves."""
    import featvis.gallery.site as site

    out = tmp_path / "g"
    shutil.copytree(gallery[0], out)
    for page in [*out.rglob("*.html"), *(out / "layers").rglob("*.json")]:
        page.unlink()  # every page new, as in a first run: new pages link to each other
    writes = []
    original = site.atomic_write_text

    def write_then_check(path, text):
        original(path, text)
        writes.append(path)
        check_links(out)

    monkeypatch.setattr(site, "atomic_write_text", write_then_check)
    rebuild_index(out)
    assert len(writes) > 20 and check_links(out) > 50
    assert parse_page(out / "index.html").links == parse_page(gallery[0] / "index.html").links  # complete in the end


def test_killed_and_interrupted_runs_resume_to_the_same_gallery(reference, tmp_path):
    out = tmp_path / "g"
    argv = ["gallery", TINY, "--layers", "conv2", "--out", str(out), "--batch", "1", "--steps", "200", "--size", "32"]
    # 1. kill -9 after the filters and the first channel are recorded
    process = featvis_process(*argv)
    wait_for_records(out, 2, process)
    process.kill()
    process.wait()
    done = records(out)
    assert len(done) < 13, "the run finished before it could be interrupted"
    check_links(out)  # what is there is consistent
    mtimes = {rel: (out / rel).stat().st_mtime_ns for record in done.values() for rel in record["files"]}
    # 2. Ctrl-C in the middle of a later channel: nothing half-optimised may be recorded
    process = featvis_process(*argv)
    wait_for_records(out, len(done) + 1, process)
    time.sleep(0.1)  # well inside the next channel's 200 steps
    process.send_signal(signal.SIGINT)
    code, _, err = finish(process)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    for (_, c, kind), record in records(out).items():  # every recorded image had all its 200 steps
        if kind == "positive":
            assert (out / record["result"]["image"]).read_bytes() == (reference / channel_json(reference, "conv2", c)["image"]).read_bytes()
    # 3. the rerun completes; what was done is not done again
    code, _, err = finish(featvis_process(*argv, "--json"))
    assert code == 0, err
    assert len(records(out)) == 1 + 6 * 2  # filters, and a picture and a description per channel
    assert all((out / rel).stat().st_mtime_ns == mtime for rel, mtime in mtimes.items())
    same_images(out, reference)
    check_links(out)


def test_two_shards_in_two_processes_merge_into_one_gallery(reference, tmp_path):
    out = tmp_path / "g"
    argv = ["gallery", TINY, "--layers", "conv2", "--out", str(out), "--batch", "1", "--steps", "200", "--size", "32",
            "--quiet", "--json"]
    first = featvis_process(*argv, "--shard", "0/2")
    second = featvis_process(*argv, env={"RANK": "1", "WORLD_SIZE": "2"})  # as torchrun sets them
    results = [finish(first), finish(second)]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    assert [json.loads(stdout)["shard"] for _, stdout, _ in results] == ["0/2", "1/2"]
    code, _, err = finish(featvis_process("gallery", "--index-only", str(out)))
    assert code == 0, err
    shard_records = [{(r["layer"], r["channel"], r["kind"]) for r in json.loads((out / "manifests" / name).read_text())["records"]}
                     for name in ("shard-0-of-2.json", "shard-1-of-2.json")]
    assert not shard_records[0] & shard_records[1]  # each item made once
    assert shard_records[0] | shard_records[1] == {("conv2", c, kind) for c in range(6) for kind in ("positive", "description")} \
        | {("conv1", None, "filters")}
    assert {c for _, c, _ in shard_records[1]} == {1, 3, 5}  # every other unit
    same_images(out, reference)
    assert "6 of 6" in "".join(parse_page(out / "index.html").text)
    check_links(out)


# --- escaping -------------------------------------------------------------------------------------
HOSTILE = ["<script>alert('layer')</script>", 'a&b "quoted" <img src=x onerror=alert(1)>']


def test_user_data_is_escaped_everywhere(tmp_path):
    net = nn.Sequential()
    net.add_module(HOSTILE[0], nn.Conv2d(3, 4, 3, padding=1))
    net.add_module("relu", nn.ReLU())
    net.add_module(HOSTILE[1], nn.Conv2d(4, 3, 3, padding=1))
    model = featvis.FeatvisModel(net, name="</title><script>alert('model')</script>", input_size=32).freeze()
    photos = tmp_path / "photos"
    photos.mkdir()
    featvis.save_image(torch.rand(3, 40, 40, generator=torch.Generator().manual_seed(0)), photos / "<b onmouseover=x>.png")
    out = tmp_path / "g"
    make_gallery(model, HOSTILE, out, channels="0:2", steps=2, size=32, images=photos, patches=1, progress=False)
    pages = list(out.rglob("*.html"))
    assert len(pages) == 1 + 2 + 2 * 2
    seen = ""
    for page in pages:
        parsed = parse_page(page)
        assert set(parsed.tags) <= {"html", "head", "meta", "title", "style", "body", "nav", "a", "h1", "h2", "p", "span",
                                    "div", "img", "table", "tr", "th", "td", "code", "figure", "figcaption", "br"}
        seen += "".join(parsed.text)
    assert all(name in seen for name in HOSTILE) and "<b onmouseover=x>.png" in seen and "</title><script>" in seen
    for path in out.rglob("*"):  # file names are ours, never the user's
        assert all(ch.isalnum() or ch in "._-" for ch in path.name), path
    assert channel_json(out, HOSTILE[1], 0)["layer"] == HOSTILE[1]
    assert check_links(out) > 10


def test_tag_escapes_text_and_attributes():
    assert tag("p", "<b>&", title='"x" <y>') == '<p title="&quot;x&quot; &lt;y&gt;">&lt;b&gt;&amp;</p>'
    assert tag("img", src="a b/c.png", alt=None) == '<img src="a b/c.png">'


# --- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--layers", "conv9"], "unknown layer 'conv9' in tiny; closest: conv"),
    (["--layers", "conv2", "--channels", "4:9"], "channels '4:9' out of range for layer 'conv2', which has 6 channels (0..5)"),
    (["--layers", "conv2", "--channels", "x"], "bad channel selection 'x'"),
    (["--layers", "conv2", "--shard", "2/2"], "bad shard '2/2'"),
    (["--layers", "fc", "--diversity", "1"], "--diversity needs at least 2 images"),
    (["--layers", "conv2", "--images", "nowhere"], "--images nowhere not found"),
    (["--layers", "conv2", "--images", "junk"], "none of the 1 images in junk could be read"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_text("not a jpeg")
    code, out, err = run_cli(capsys, "gallery", TINY, "--out", "g", *FAST, *args)
    assert code == 2 and out == ""
    assert err.splitlines()[-1].startswith("featvis: error: ") and message in err.splitlines()[-1]
    assert "Traceback" not in err
    assert not (tmp_path / "g" / "manifests").exists()


def test_unwritable_output_folder(tmp_path, capsys):
    """Root may write anywhere, but not below a regular file."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out, message in ((blocker / "g", "cannot create folder"), (blocker, "cannot create folder")):
        code, _, err = run_cli(capsys, "gallery", TINY, "--layers", "conv2", "--out", str(out), *FAST)
        assert code == 2 and message in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "gallery", "--index-only", str(tmp_path))
    assert code == 2 and "no gallery manifests" in err
    code, _, err = run_cli(capsys, "gallery", TINY, "--index-only", str(tmp_path))
    assert code == 2 and "--index-only DIR takes no MODEL" in err


def test_failure_midway_leaves_a_consistent_manifest(tmp_path, capsys):
    out = tmp_path / "g"
    (out / "layers").mkdir(parents=True)
    (out / "layers" / "conv2").write_text("in the way")  # conv2's images cannot be written
    argv = ["gallery", TINY, "--layers", "conv1,conv2", "--channels", "0:2", "--out", str(out), "--json", *FAST]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "cannot create folder" in err and "conv2" in err
    done = records(out)
    assert set(done) == {("conv1", None, "filters"), *(("conv1", c, kind) for c in (0, 1) for kind in ("positive", "description"))}
    for record in done.values():
        assert all(featvis.gallery.manifest.sha256_file(out / rel) == sha for rel, sha in record["files"].items())
    check_links(out)
    (out / "layers" / "conv2").unlink()
    code, stdout, _ = run_cli(capsys, *argv)
    assert code == 0 and json.loads(stdout)["made"] == 4 and json.loads(stdout)["skipped"] == 5


# --- planning -------------------------------------------------------------------------------------
def test_channel_selections():
    layer = Layer("conv2", "conv2", (), 6, (6, 4, 4), 2)
    assert parse_channels(None, layer) == parse_channels("all", layer) == parse_channels(":", layer) == list(range(6))
    assert parse_channels("0:3", layer) == [0, 1, 2]
    assert parse_channels("4:", layer) == [4, 5] and parse_channels(":2", layer) == [0, 1]
    assert parse_channels("5,0:2,1", layer) == [0, 1, 5]
    for bad in ("0:7", "6", "-1", "3:3", "a"):
        with pytest.raises(featvis.FeatvisError):
            parse_channels(bad, layer)


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_partition_the_units(count):
    layers = [Layer(f"l{i}", f"l{i}", (), n, (n, 1, 1), i) for i, n in enumerate((7, 3, 12))]
    units = plan_units(layers, {layer.name: list(range(layer.channels)) for layer in layers}, 4)
    shares = [shard_units(units, i, count) for i in range(count)]
    assert sorted((u.layer.name, u.channels) for share in shares for u in share) == sorted((u.layer.name, u.channels) for u in units)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert all(len(u.channels) <= 4 for u in units)


def test_shard_arguments():
    assert parse_shard("1/4") == (1, 4)
    assert shard_from_env({}) == (0, 1) and shard_from_env({"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8)
    for bad in ("4/4", "1/0", "x", "-1/2"):
        with pytest.raises(featvis.FeatvisError):
            parse_shard(bad)


def test_slugs_are_safe_and_distinct():
    names = ["conv1", "Conv1", "inception4a.branch2.1", "inception4a_branch2_1", "<script>", "a/b", "a b", ".."]
    slugs = [slug(name) for name in names]
    assert slug("conv1") == "conv1" and len({s.lower() for s in slugs}) == len(names)
    assert all(s and all(ch.isalnum() or ch in "_-" for ch in s) for s in slugs)
