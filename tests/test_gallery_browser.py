"""The gallery in a real browser (Debian's chromium, headless): every image loads, every link
resolves, nothing comes from the network, and a screenshot of the index is produced.

A small checker page (outside the gallery) crawls the site from index.html in iframes, waits
for every image, and writes its findings into its own DOM, which ``chromium --dump-dom`` prints.
The same checker run on a deliberately broken copy must report exactly what was broken.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featvis.gallery import make_gallery

from test_gallery import tiny_cnn

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: install Debian's chromium (apt-get install chromium)")

CHECKER = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body><pre id="result">running</pre><script>
const start = new URL(%(start)s, location.href).href;
const result = {pages: 0, json: 0, images: 0, linked_images: 0, broken_images: [], broken_links: [], external: []};
const seen = new Set([start]), queue = [start];
function load(url) {
  return new Promise(done => {
    const frame = document.createElement("iframe");
    frame.style.width = "1200px";
    frame.onload = () => done(frame);
    frame.src = url;
    document.body.appendChild(frame);
  });
}
function settled(img) {
  return img.complete ? Promise.resolve() : new Promise(ok => { img.addEventListener("load", ok); img.addEventListener("error", ok); });
}
(async () => {
  while (queue.length) {
    const url = queue.shift();
    const frame = await load(url);
    let doc = null;
    try { doc = frame.contentDocument; } catch (e) {}
    if (!doc || !doc.body) { result.broken_links.push(url); frame.remove(); continue; }
    if (/[.](png|jpe?g)$/.test(url)) {  // a linked image (a patch's whole photo): it must load
      const img = doc.images[0];
      if (img) await settled(img);
      if (img && img.naturalWidth > 0) result.linked_images++; else result.broken_images.push(url);
      frame.remove(); continue;
    }
    if (url.endsWith(".json")) {
      try { JSON.parse(doc.body.innerText); result.json++; } catch (e) { result.broken_links.push(url); }
      frame.remove(); continue;
    }
    result.pages++;
    for (const img of doc.images) {
      await settled(img);
      result.images++;
      if (!img.src.startsWith("file:")) result.external.push(img.src);
      if (!(img.naturalWidth > 0)) result.broken_images.push(img.src);
    }
    for (const entry of frame.contentWindow.performance.getEntriesByType("resource")) {
      if (!entry.name.startsWith("file:")) result.external.push(entry.name);
    }
    for (const a of doc.querySelectorAll("a[href]")) {
      const target = new URL(a.getAttribute("href"), doc.baseURI);
      target.hash = "";
      if (target.protocol !== "file:") { result.external.push(target.href); continue; }
      if (!seen.has(target.href)) { seen.add(target.href); queue.push(target.href); }
    }
    frame.remove();
  }
  document.getElementById("result").textContent = "RESULT" + JSON.stringify(result) + "END";
})();
</script></body></html>
"""


def chromium(tmp_path: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Headless chromium as root: no sandbox, no GPU, no network chatter, a fresh profile."""
    profile = tmp_path / f"profile{len(list(tmp_path.glob('profile*')))}"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def crawl(tmp_path: Path, gallery: Path) -> dict:
    checker = tmp_path / f"check_{gallery.name}.html"
    checker.write_text(CHECKER % {"start": json.dumps((gallery / "index.html").as_uri())})
    done = chromium(tmp_path, "--allow-file-access-from-files", "--virtual-time-budget=60000", "--dump-dom", checker.as_uri())
    match = re.search(r"RESULT(.*?)END", done.stdout)
    assert match, f"the checker did not finish: {done.stdout[-500:]} {done.stderr[-500:]}"
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    from skimage import data

    root = tmp_path_factory.mktemp("browser")
    photos = root / "photos"
    photos.mkdir()
    for name in ("chelsea", "coffee"):
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((96, 96))
        image.save(photos / f"{name}.png")
    make_gallery(tiny_cnn(), ["conv1", "conv2"], root / "gallery", channels="0:3", steps=4, size=32, batch=3,
                 images=photos, patches=2, negative=True, diversity=2, progress=False)
    return root / "gallery"


def test_every_image_loads_and_every_link_resolves(site, tmp_path):
    report = crawl(tmp_path, site)
    pages = len(list(site.rglob("*.html")))
    assert report["pages"] == pages == 1 + 2 + 6
    assert report["json"] == 6
    assert report["linked_images"] == 6 * 2  # each channel's 2 patches link to their whole photo, box drawn
    # index: 8 filters + 6 thumbnails; layers: 3 each; channels: image, negative, 2 diversity, 2 patches
    assert report["images"] == 8 + 6 + 2 * 3 + 6 * 6
    assert report["broken_images"] == [] and report["broken_links"] == [] and report["external"] == []


def test_checker_reports_what_is_broken(site, tmp_path):
    """The same crawl on a damaged copy: one image deleted, one channel page deleted."""
    broken = tmp_path / "broken"
    shutil.copytree(site, broken)
    channel = json.loads((broken / "layers" / "conv2" / "1.json").read_text())
    (broken / channel["image"]).unlink()
    (broken / "layers" / "conv1" / "2.html").unlink()
    report = crawl(tmp_path, broken)
    missing_image = (broken / channel["image"]).as_uri()
    assert report["broken_images"] and set(report["broken_images"]) == {missing_image}
    assert report["broken_links"] == [(broken / "layers" / "conv1" / "2.html").as_uri()]


def test_screenshot_of_the_index(site, tmp_path, record_property):
    shot = tmp_path / "gallery_index.png"
    chromium(tmp_path, "--window-size=1280,900", "--hide-scrollbars", f"--screenshot={shot}", (site / "index.html").as_uri())
    record_property("screenshot", str(shot))
    print(f"screenshot of the gallery index: {shot}")
    image = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float32)
    assert image.shape == (900, 1280, 3)
    assert image.std() > 10  # text and thumbnails, not a blank page
