"""Hostile input beyond one command line: a tampered weights cache, decompression bombs, a full
disk (a real one: a small tmpfs, or a file-size limit), Ctrl-C during start-up and during a
render, endless steps, devices that are not there. Signals and disks are real, in subprocesses.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featvis
from featvis import check_device
from featvis.optvis.transforms import STANDARD
from featvis.models.weights import BVLC_GOOGLENET, CACHE_ENV, SQUEEZENET1_1, URL_ENV, WEIGHTS_ENV, state_digest

MAIN = "import sys; from featvis.cli import main; sys.exit(main(sys.argv[1:]))"


def _python(*args: str, cwd: Path, env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """featvis's main() in a fresh interpreter (warnings as featvis shows them, no inherited filters)."""
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env={**clean, **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


# --- weights cache ----------------------------------------------------------------------------
def test_shipped_state_digests_match_the_verified_releases(weights_dir):
    """The digests featvis checks its cache against are those of the raw releases (SHA-256 verified on load)."""
    for spec, release in (("inceptionv1", BVLC_GOOGLENET), ("squeezenet1_1", SQUEEZENET1_1)):
        net = featvis.load_model(spec, weights=weights_dir / release.name, progress=False).net
        assert state_digest(net.state_dict()) == release.state_digest()


def test_tampered_cache_is_rebuilt_or_named_for_deletion(weights_dir, inceptionv1, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(weights_dir / "bvlc_googlenet", cache / "bvlc_googlenet")  # as a finished download leaves it
    monkeypatch.delenv(WEIGHTS_ENV)
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9")  # no network: a rebuild must use the verified raw files
    featvis.load_model("inceptionv1", progress=False)
    converted = cache / "bvlc_googlenet.pt"
    x = torch.rand(2, 3, 224, 224)

    def tamper() -> None:
        state = torch.load(converted, weights_only=True)
        state["fc.bias"][7] += 100.0  # every photo becomes class 7, silently
        torch.save(state, converted)

    tamper()
    with pytest.warns(UserWarning, match="tensors differ from the release.*rebuilt"):
        model = featvis.load_model("inceptionv1", progress=False)
    with torch.no_grad():
        assert torch.equal(model(x), inceptionv1(x)), "the rebuilt weights are the verified release"
    assert featvis.load_model("inceptionv1", progress=False) is not None  # the rebuilt file now loads quietly

    shutil.rmtree(cache / "bvlc_googlenet")  # without the raw files, no rebuild: name the file to delete
    tamper()
    with pytest.raises(featvis.FeatvisError, match=rf"tensors differ .*; delete {converted} and run again"):
        featvis.load_model("inceptionv1", progress=False)
    converted.write_bytes(converted.read_bytes()[: 1 << 16])  # cut short
    with pytest.raises(featvis.FeatvisError, match=rf"cached weights {converted} are damaged .*; delete {converted}"):
        featvis.load_model("inceptionv1", progress=False)


# --- images -----------------------------------------------------------------------------------
def test_pixel_limit_is_configurable_and_pil_warnings_stay_quiet(tmp_path, monkeypatch):
    palette = Image.new("P", (100, 50))
    palette.putpalette([0, 0, 0, 255, 255, 255] * 128)
    palette.save(tmp_path / "palette.png", transparency=b"\x80\xff")  # PIL warns when converting this one
    monkeypatch.setenv("FEATVIS_MAX_PIXELS", "4999")
    with pytest.raises(featvis.FeatvisError, match=r"palette.png is 100x50 pixels, more than featvis reads \(4999 pixels\)"):
        featvis.load_image(tmp_path / "palette.png")
    monkeypatch.setenv("FEATVIS_MAX_PIXELS", "5000")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = featvis.load_image(tmp_path / "palette.png")
    assert image.shape == (3, 50, 100)
    assert torch.allclose(image[:, 0, 0], torch.full((3,), 1 - 0x80 / 255))  # black at alpha 128/255 over white


def test_photo_collections_skip_a_bomb(tmp_path):
    """The streaming pass behind `examples` and `gallery --images` skips a bomb and lists it, never decoding it."""
    from test_bad_input import bomb_png

    photos = tmp_path / "photos"
    photos.mkdir()
    bomb_png(photos / "a_bomb.png", 12000, 12000)  # PIL alone would decode 144 million pixels (4.6 GB)
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(photos / "b_photo.png")
    model = featvis.as_model(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)), input_size=32)
    result = featvis.dataset_examples(model, photos, "0", tmp_path / "out", k=1, batch=1, workers=0, progress=False)
    summary = result.summary
    assert summary["images"] == 1
    assert [Path(s["path"]).name for s in summary["skipped"]] == ["a_bomb.png"]
    assert "12000x12000 pixels" in summary["skipped"][0]["error"]


# --- render: nothing per step ------------------------------------------------------------------
def test_transform_stream_is_the_draw_in_bounded_blocks():
    """Streaming keeps every image's random transforms (the same renders), in memory bounded by the block."""
    drawn = STANDARD.draw([torch.Generator().manual_seed(s) for s in (1, 2)], 600, 128, 224)
    streamed = torch.stack(list(STANDARD.stream([torch.Generator().manual_seed(s) for s in (1, 2)], 600, 128, 224)))
    assert torch.equal(streamed, drawn)
    endless = STANDARD.stream([torch.Generator().manual_seed(0)], 10**15, 128, 224)
    assert next(endless).shape == (1, 2, 3)  # a draw of every step at once would need 48 PB


# --- devices ----------------------------------------------------------------------------------
def test_devices_that_are_not_there_are_refused():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(featvis.FeatvisError, match="device 'meta' holds no data.*use one of: cpu"):
        check_device("meta")
    count = torch.cuda.device_count()
    with pytest.raises(featvis.FeatvisError, match=f"cuda:{count}"):
        check_device(f"cuda:{count}")
    with pytest.raises(featvis.FeatvisError, match="unknown device 'gpu0'"):
        check_device("gpu0")


# --- a full disk ------------------------------------------------------------------------------
FULL_DISK = """
import json, os, sys
from featvis.cli import main
os.chdir(sys.argv[1])
with open("keep.png", "wb") as keep:
    keep.write(b"an earlier figure")
try:
    with open("filler", "wb") as filler:  # fill the disk to the last byte
        while True:
            filler.write(b"\\0" * 4096)
            filler.flush()
except OSError:
    pass
code = main(["filters", sys.argv[2] + ":marked", "conv", "-o", "keep.png"])
print(json.dumps({"code": code, "kept": open("keep.png", "rb").read() == b"an earlier figure",
                  "files": sorted(os.listdir("."))}))
"""


def _full_disk_run(user_models: Path, how: str) -> subprocess.Popen:
    """FULL_DISK in a 256 KiB tmpfs of a private mount namespace, or under a 4 KiB file-size limit."""
    disk = user_models / "disk"
    disk.mkdir()
    script = [FULL_DISK, str(disk), str(user_models / "nets.py")]
    if how == "file size limit":
        limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))  # noqa: E731
        return _python("-c", *script, cwd=user_models, preexec_fn=limit)
    unshare = ["unshare", *([] if os.geteuid() == 0 else ["--user", "--map-root-user"]), "--mount", "sh", "-c"]
    mount = f'mount -t tmpfs -o size=256k tmpfs "{disk}"'
    if not shutil.which("unshare") or subprocess.run([*unshare, mount], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a private tmpfs here (needs unshare, and root or user namespaces)")
    return subprocess.Popen([*unshare, f'{mount} && exec "{sys.executable}" -c "$0" "$1" "$2"', *script], cwd=user_models,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("how", ["tmpfs", "file size limit"])
def test_disk_full_is_one_line_and_keeps_the_old_file(user_models, how):
    out, err = _full_disk_run(user_models, how).communicate(timeout=300)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["code"] == 2 and result["kept"], err
    assert err.startswith("featvis: error: cannot write keep.png: ") and err.count("\n") == 1, err
    assert "(the previous file is unchanged); free some space" in err
    assert [name for name in result["files"] if name.endswith(".tmp")] == []


# --- Ctrl-C -----------------------------------------------------------------------------------
INTERRUPT_AT_START = """
import signal, sys, threading, time
from featvis.cli import main

def interrupt():  # a real SIGINT the moment the command line starts loading its subcommand
    while "featvis.cli.layers" not in sys.modules:
        time.sleep(0.0002)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

threading.Thread(target=interrupt, daemon=True).start()
sys.exit(main(["layers", "inceptionv1"]))
"""


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    out, err = _python("-c", INTERRUPT_AT_START, cwd=tmp_path).communicate(timeout=300)
    assert err == "featvis: interrupted\n" and out == ""


def test_ctrl_c_during_render_keeps_the_old_image_and_says_so(user_models):
    """10^9 steps (nothing may be allocated per step), interrupted by SIGINT once optimising."""
    keep = user_models / "keep.png"
    keep.write_bytes(b"an earlier render")
    mark = user_models / "started"
    # --quiet: off a terminal, progress lines (e.g. the natural-photo pass's) would share stderr with the one line checked
    process = _python("-c", MAIN, "render", "nets.py:marked", "conv:0", "--steps", "100000", "--size", "16", "-o",
                      "keep.png", "--json", "--quiet", "--precision", "float32", cwd=user_models,
                      env={"FEATVIS_TEST_MARK": str(mark)})
    deadline = time.monotonic() + 240
    while not mark.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 130, err
    (row,) = json.loads(out)
    partial = user_models / "keep.partial.png"
    assert row["interrupted"] is True and 1 <= row["steps"] < 10**9 and row["path"] == "keep.partial.png"
    assert keep.read_bytes() == b"an earlier render"
    assert Image.open(partial).size == (16, 16)
    assert err.splitlines() == [f"featvis: interrupted after {row['steps']} steps; saved the images so far beside the "
                                "requested ones, as keep.partial.png"]
