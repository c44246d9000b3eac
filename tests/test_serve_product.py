"""`featvis serve` as a product, against real server processes: a signal ends it and its children, a
unit page's dataset examples are numbers with crops cut when shown, work nobody waits for leaves the
queue, pictures refine in place, negatives use the pre-activation, the index shows blocks, and a unit
page names the classes it promotes. Helpers and the small model: test_serve."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette", reason="featvis serve needs the serve extra: pip install 'featvis[serve]'")
pytest.importorskip("uvicorn", reason="featvis serve needs the serve extra: pip install 'featvis[serve]'")

from test_serve import Serve, cli_render, fragment, pixels, project, server  # noqa: E402,F401 (fixtures)


def _children(pid: int) -> list[int]:
    """Living processes whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)],
                         ids=["ctrl-c", "sigterm", "kill-9"])
def test_a_signal_ends_the_server_and_its_examples_child_within_seconds(project, tmp_path, sig, code):
    """A unit page starts a slow `featvis examples` child (every forward pass sleeps 30 s); SIGINT or SIGTERM
    ends the server (exit 130 / 143, one line) and the child within 10 s, with queued passes dropped; after
    kill -9 of the server the child ends by itself (it dies with its parent)."""
    serve = Serve(project, tmp_path / "cache", "--images", "photos", env={"FEATVIS_TEST_EXAMPLES_SLEEP": "30"})
    try:
        for layer in ("conv1", "conv2", "conv3"):  # one pass runs, two wait in the queue
            assert serve.get(f"/layer/{layer}/0")[0] == 200
        end = time.monotonic() + 60
        while not (children := _children(serve.process.pid)) and time.monotonic() < end:
            time.sleep(0.1)
        assert children, "no examples child started"
        time.sleep(1.0)  # the child is loading or streaming
        start = time.monotonic()
        serve.process.send_signal(sig)
        serve.process.wait(10)
        end = time.monotonic() + 10
        while any(_alive(child) for child in children) and time.monotonic() < end:
            time.sleep(0.1)
        assert not [child for child in children if _alive(child)], "the examples child outlived the server"
        assert time.monotonic() - start < 10
        assert serve.process.returncode == code
        if sig != signal.SIGKILL:
            assert serve.stderr[-1:] == [{130: "featvis: interrupted\n", 143: "featvis: terminated\n"}[code]], serve.stderr
    finally:
        serve.stop()


def test_a_negative_is_of_the_layer_before_the_activation(server, project, tmp_path):
    """relu1's negative optimises -conv1 (the module relu1 reads, by its forward), as Lucid negates
    mixed4a_pre_relu: the page says so, and the picture is what a separate `featvis render` makes of it."""
    status, body, _ = server.get("/layer/relu1/2")
    assert status == 200 and "-conv1:2: the layer before its activation" in body.decode()
    keys = re.findall(r'data-(?:picture|done)="([0-9a-f]{64})"', body.decode())
    states = {server.wait(key)["spec"]: server.wait(key) for key in keys}
    assert set(states) == {"relu1:2", "-conv1:2"}
    state = states["-conv1:2"]
    expected = cli_render(project, state["meta"]["batch"], tmp_path)
    assert np.array_equal(pixels(server.get("/files/" + state["files"][0])[1]), expected["-conv1:2"])
    assert "the layer before its activation" not in server.get("/layer/conv2/2")[1].decode()  # conv2 may go negative


def test_examples_keep_numbers_cut_crops_when_shown_and_never_run_twice(project, tmp_path):
    """A unit page over 28 photos: the pass stores numbers only (no PNG until a page shows one), each crop
    shown is byte for byte the crop a separate `featvis examples` run cuts, and a restarted server reads
    the finished pass back (its files untouched) instead of running it again."""
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos28"
    photos.mkdir()
    for i in range(28):
        Image.fromarray((rng.random((90 + i, 120, 3)) * 255).astype(np.uint8)).save(photos / f"{i:02d}.png")
    cache = tmp_path / "cache"
    serve = Serve(project, cache, "--images", str(photos))
    try:
        assert serve.get("/layer/conv2/3")[0] == 200
        html = fragment(serve, "/fragment/examples/conv2/3")
        crops = re.findall(r'src="(/examples/conv2/3/\d+\.png)"', html)
        assert len(crops) == 9
        folder = next((cache / "examples").glob("*/conv2"))
        assert list(folder.rglob("*.png")) == []  # numbers only, so far
        assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 1_000_000
        shown = [serve.get(url) for url in crops]
    finally:
        serve.stop()
    assert all(status == 200 for status, _, _ in shown)
    assert len(list(folder.rglob("*.png"))) == 9  # one per crop shown
    done = subprocess.run([sys.executable, "-m", "featvis", "examples", "nets.py:small", "--images", str(photos), "--layers",
                           "conv2", "--channels", "3", "--k", "9", "--workers", "0", "--out", str(tmp_path / "cli"), "--json", "-q"],
                          cwd=project, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)["layers"]["conv2"]["3"]
    assert [(tmp_path / "cli" / e["crop"]).read_bytes() for e in entries] == [body for _, body, _ in shown]
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    again = Serve(project, cache, "--images", str(photos))
    try:
        start = time.monotonic()
        assert again.get("/layer/conv2/3")[0] == 200
        assert re.findall(r'src="(/examples/conv2/3/\d+\.png)"', fragment(again, "/fragment/examples/conv2/3")) == crops
        assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == stamps  # read back, not run again
        assert time.monotonic() - start < 30
    finally:
        again.stop()


def test_pictures_nobody_waits_for_leave_the_queue_and_come_back_when_asked(project, tmp_path):
    """Eight unit pages opened and closed at once (16 pictures queued, no page polls them): within seconds
    the queue is empty and most were never rendered; a page that asks again gets its picture queued and made."""
    serve = Serve(project, tmp_path / "cache", "--drop-after", "1", "--batch", "2", env={"FEATVIS_TEST_SLEEP": "0.05"})
    try:
        keys = [key for c in range(8) for key in serve.keys(f"/layer/conv1/{c}")]
        assert len(keys) == 16
        end = time.monotonic() + 20
        while serve.json("/api/stats")["pending"] and time.monotonic() < end:
            time.sleep(0.2)
        stats = serve.json("/api/stats")
        assert stats["pending"] == 0 and stats["dropped"] >= 8, stats
        made = stats["images"]
        assert made < 16
        time.sleep(2)
        assert serve.json("/api/stats")["images"] <= made + 2  # nothing more started after the sweep but what was running
        state = serve.wait(keys[-1])  # asked again (and polled): queued anew and rendered
        assert state["state"] == "done" and state["spec"] == "-conv1:7"
    finally:
        serve.stop()


def test_the_index_shows_blocks_and_next_goes_to_the_next_block():
    """GoogLeNet's index as the paper's table lists it (Szegedy et al. 2015, Table 1: the convolutions, the
    nine Inception modules, the classifier; pools between them): branches and pre-activations folded under
    their module, and "next"/"previous" of mixed4a are mixed4b/mixed3b, of a branch its siblings."""
    import featvis
    from featvis.optvis import RenderSettings
    from featvis.serve.units import ModelInfo

    info = ModelInfo(featvis.load_model("inceptionv1", pretrained=False), RenderSettings())
    assert info.stages == ["conv2d0", "conv2d1", "conv2d2", "mixed3a", "mixed3b", "mixed4a", "mixed4b", "mixed4c",
                           "mixed4d", "mixed4e", "mixed5a", "mixed5b", "fc"]
    assert [name for name in info.blocks if name.startswith("maxpool")] == ["maxpool1", "maxpool2", "maxpool3", "maxpool4"]
    inside = [row.name for row in info.blocks["mixed4a"]]
    assert inside[0] == "mixed4a" and {"mixed4a_1x1", "mixed4a_3x3_pre_relu", "mixed4a_pre_relu"} <= set(inside)
    assert info.neighbours(info.row("mixed4a")) == ("mixed3b", "mixed4b")
    assert info.neighbours(info.row("conv2d0")) == (None, "conv2d1")
    assert info.neighbours(info.row("mixed4a_3x3"))[0] in inside


def test_the_index_page_folds_layers_under_blocks(server):
    status, body, _ = server.get("/")
    html = body.decode()
    assert status == 200
    blocks = re.findall(r'<section class="block" id="block-([^"]+)"', html)
    assert blocks[:4] == ["sleep", "conv1", "relu1", "conv2"]  # a user's Sequential: every module is a step
    strip = re.search(r'id="block-conv3">(.*?)</section>', html, re.S)[1]
    assert sorted(set(re.findall(r'alt="conv3:(\d+)"', strip))) == [str(c) for c in range(6)]  # rendered as they scroll in


def test_a_rendering_picture_shows_a_preview_that_is_its_own_image_at_that_step(project, tmp_path):
    """While a picture renders, the page gets a preview at the queue's kept steps (step 4 of these 6); the
    preview is the render's own image at that step (`featvis.render(..., thresholds=[4])` in this process)."""
    serve = Serve(project, tmp_path / "cache", env={"FEATVIS_TEST_SLEEP": "0.3"})
    try:
        (key, *_) = serve.keys("/layer/conv2/5")
        end, state = time.monotonic() + 120, {}
        while time.monotonic() < end:
            state = serve.json(f"/api/status?key={key}")[key]
            if state["preview"] or state["state"] in ("done", "failed"):
                break
            time.sleep(0.05)
        assert state["state"] == "running" and state["preview"] == 4, state
        status, body, headers = serve.get(f"/api/preview/{key}/0")
        assert status == 200 and headers["content-type"] == "image/png"
        batch = serve.wait(key)["meta"]["batch"]
        assert serve.get(f"/api/preview/{key}/0")[0] == 404  # finished: the picture itself, no preview
    finally:
        serve.stop()
    import featvis
    from featvis.core.images import to_pil

    model = featvis.load_model(f"{project / 'nets.py'}:small", progress=False)  # in this process, independently
    results = featvis.render(model, batch, steps=6, size=48, seed=0, precision="float32", batch=16, thresholds=[4],
                             progress=False, natural=False)
    mine = next(r for r in results if r.spec == "conv2:5")
    assert np.array_equal(pixels(body), np.asarray(to_pil(mine.images[4])))


def test_a_unit_page_shows_a_diversity_set_by_default(project, tmp_path):
    """Without --diversity the unit page has Microscope's diversity set: four pictures in one objective
    (`featvis render` of the same Lucid channel + 1e2 * diversity objective gives them)."""
    from featvis.cli import build_parser

    assert build_parser().parse_args(["serve", "nets.py:small"]).diversity == 4
    serve = Serve(project, tmp_path / "cache", "--diversity", "4")  # the default, as the last flag given wins
    try:
        status, body, _ = serve.get("/layer/conv2/1")
        assert status == 200 and 'id="picture-diversity"' in body.decode()
    finally:
        serve.stop()


def test_a_unit_page_names_the_classes_it_promotes(server, project):
    """The unit page's classes are featvis.promoted_classes over the collection's first photos, computed
    here in this process on the user's own model; labels are escaped."""
    import featvis
    from featvis.examples.source import list_images

    assert 'data-fragment="/fragment/promotes/conv3/2"' in server.get("/layer/conv3/2")[1].decode()
    html = fragment(server, "/fragment/promotes/conv3/2")
    shown = re.findall(r"<tr><td>(.*?) \((\d+)\)</td><td>([-+0-9.e]+)</td></tr>", html)
    model = featvis.load_model(f"{project / 'nets.py'}:small", progress=False)
    photos = [featvis.load_image(p) for p in list_images(project / "photos")[:8]]
    expected = featvis.promoted_classes(model, "conv3", 2, photos=photos)
    assert [int(i) for _, i, _ in shown] == [i for i, _, _ in expected]
    assert [float(v) for *_, v in shown] == pytest.approx([v for *_, v in expected], rel=1e-2, abs=1e-3)
    assert "<b>lizard</b>" not in html  # a label from the model, escaped
