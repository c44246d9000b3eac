"""`featvis serve` in a real browser (headless Debian chromium through Playwright): a unit page shows a
placeholder, then the picture, whose pixels as drawn by the browser equal a separate `featvis render`
process's; a circuit link leads to the connected unit's page; an uploaded photo gets its
classification, saliency and building-blocks explanation.
"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="featvis serve needs the serve extra: pip install 'featvis[serve]'")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs playwright (pip install playwright)")

import featvis  # noqa: E402

from test_serve import Serve, cli_render, write_project  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary: install Debian's chromium (apt-get install chromium)")
TIMEOUT_MS = 60_000

LOADED_JS = "img => img.complete && img.naturalWidth > 0"  # data-done is set before the browser has the file
PIXELS_JS = """img => {
  const canvas = document.createElement("canvas");
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(img, 0, 0);
  return Array.from(context.getImageData(0, 0, canvas.width, canvas.height).data);
}"""


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    project = write_project(tmp_path_factory.mktemp("serve-browser"))
    serve = Serve(project, project / "cache")
    yield project, serve
    serve.stop()


def test_unit_page_shows_the_picture_featvis_render_makes_and_circuit_links_work(browser, site, tmp_path):
    project, serve = site
    page = browser.new_page()
    answer = page.goto(serve.url + "/layer/conv3/4")
    assert answer.status == 200 and 'class="pending"' in answer.text()  # answered before the render, with a placeholder
    img = page.wait_for_selector("#picture-positive img[data-done]", timeout=TIMEOUT_MS)
    page.wait_for_function(LOADED_JS, arg=img, timeout=TIMEOUT_MS)
    shown = np.array(img.evaluate(PIXELS_JS), dtype=np.uint8).reshape(48, 48, 4)[..., :3]
    state = serve.json(f"/api/picture/{img.get_attribute('data-done')}")
    expected = cli_render(project, state["meta"]["batch"], tmp_path)
    assert np.array_equal(shown, expected["conv3:4"])

    # circuits: conv3's inputs come from conv2 (its ReLU and the identity "odd<b>&" pass channels
    # through one by one, so they are passed over): follow the strongest one
    link = page.wait_for_selector("a.circuit-link", timeout=TIMEOUT_MS)
    name = link.inner_text().splitlines()[-1]
    assert name.startswith("conv2:")
    link.click()
    page.wait_for_url(f"**/layer/conv2/{name.split(':')[1]}")
    assert page.inner_text("h1") == name
    page.wait_for_selector("#picture-positive img[data-done]", timeout=TIMEOUT_MS)
    # next and previous walk the blocks with weights: from conv3 to conv2 and fc, past the ReLUs, the identity,
    # the pool and the flatten between them
    page.go_back()
    assert page.locator("#neighbours a").all_inner_texts()[-2:] == ["conv2:4", "fc:4"]
    # a block whose name needs escaping, reached from the index by clicks
    page.goto(serve.url + "/")
    page.click('a[href="/layer/odd%3Cb%3E%26"]')
    page.wait_for_url("**/layer/odd%3Cb%3E%26")
    assert page.inner_text("h1") == "odd<b>&"
    page.click('a[href="/layer/odd%3Cb%3E%26/4"]')
    page.wait_for_url("**/layer/odd%3Cb%3E%26/4")
    assert page.inner_text("h1") == "odd<b>&:4"
    page.wait_for_selector("#picture-positive img[data-done]", timeout=TIMEOUT_MS)
    page.close()


def test_uploaded_photo_is_classified_and_explained(browser, site):
    project, serve = site
    page = browser.new_page()
    page.goto(serve.url + "/photo")
    photo = project / "photos" / "chelsea.png"
    page.set_input_files("input[name=photo]", str(photo))
    page.click("button[type=submit]")
    page.wait_for_url("**/photo/*")
    uploaded = page.wait_for_selector("img[alt='the uploaded photo']")
    page.wait_for_function(LOADED_JS, arg=uploaded, timeout=TIMEOUT_MS)  # shown at once, not a broken link
    page.wait_for_selector("#classes", timeout=TIMEOUT_MS)
    seen = page.wait_for_selector("img[alt='the photo as the model sees it']")
    page.wait_for_function(LOADED_JS, arg=seen, timeout=TIMEOUT_MS)
    rows = page.locator("#classes tr td:first-child").all_inner_texts()
    model = featvis.load_model(f"{project / 'nets.py'}:small", progress=False)  # in this process, independently
    expected = model.classify([featvis.load_image(photo)], top=5)[0]
    assert rows == [f"{label} ({index})" for index, label, _ in expected]  # "<b>lizard</b>" shown as text
    saliency = page.wait_for_selector("img[alt=saliency]")
    assert saliency.evaluate("img => img.complete && img.naturalWidth > 0")
    frame = page.frame_locator("#explanation")
    assert "relu3" in frame.locator("body").inner_text(timeout=TIMEOUT_MS)
    # the semantic dictionary: each channel's picture, linked to its unit page
    picture = page.wait_for_selector("#dictionary img[data-done]", timeout=TIMEOUT_MS)
    page.wait_for_function(LOADED_JS, arg=picture, timeout=TIMEOUT_MS)
    link = page.locator("#dictionary a").first
    name = link.locator("div").inner_text()
    assert name.startswith("relu3:")
    link.click()
    page.wait_for_url(f"**/layer/relu3/{name.split(':')[1]}")
    page.close()


def test_pictures_refine_in_place_and_a_closed_page_leaves_no_queue(browser, tmp_path):
    """A layer page on a slow model: a card shows the render's preview (a picture, not a placeholder) before
    the picture is done; once the page is closed, the cards it had queued leave the queue within seconds."""
    project = write_project(tmp_path)
    serve = Serve(project, tmp_path / "cache", "--drop-after", "2", "--batch", "2", env={"FEATVIS_TEST_SLEEP": "0.3"})
    try:
        page = browser.new_page()
        page.goto(serve.url + "/layer/conv1")
        preview = page.wait_for_selector(".pending img.preview", timeout=TIMEOUT_MS)
        page.wait_for_function(LOADED_JS, arg=preview, timeout=TIMEOUT_MS)
        assert serve.json("/api/stats")["pending"] > 0  # the other cards wait their turn
        page.close()
        end = time.monotonic() + 15
        while serve.json("/api/stats")["pending"] and time.monotonic() < end:
            time.sleep(0.2)
        stats = serve.json("/api/stats")
        assert stats["pending"] == 0 and stats["dropped"] > 0, stats
    finally:
        serve.stop()


def test_another_sites_page_cannot_drive_the_server_and_negatives_use_the_pre_activation(browser, site, tmp_path):
    """A page served from another origin (another port of 127.0.0.1) submits a form to the server and embeds
    one of its unit pages: both are refused (403) and nothing is queued; the server's own unit page of
    relu1 says its negative is -conv1, the layer the ReLU reads."""
    import http.server
    import threading

    project, serve = site
    (tmp_path / "evil.html").write_text(
        f'<form id="f" method="post" action="{serve.url}/api/enqueue/conv3/7"></form>'
        f'<img id="i" src="{serve.url}/layer/conv3/6">')
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        before = serve.json("/api/stats")
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{other.server_address[1]}/evil.html")
        page.wait_for_function("() => document.getElementById('i').complete")
        with page.expect_navigation():
            page.evaluate("document.getElementById('f').submit()")
        assert "cross-origin requests that change the server's state are refused" in page.inner_text("body")
        after = serve.json("/api/stats")
        assert (after["render_calls"], after["pending"]) == (before["render_calls"], before["pending"])
        page.goto(serve.url + "/layer/relu1/2")
        assert "-conv1:2: the layer before its activation" in page.inner_text("body")
        page.close()
    finally:
        other.shutdown()
