"""The one-peace-serve page in headless Chromium (Playwright): a text query and a file query show
their results (thumbnails, audio players, videos, texts); a compound query (a weighted text plus a
sound), filters (folder, dates), pages ("More"), "More like this" and the near-duplicate groups show
what the API answers; screenshots are saved under tmp."""
import json
import os
import time
import urllib.parse

import pytest
from helpers import MEDIA
from search_query_helpers import SCENES, vector_id
from test_search import post_json, raw

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytest_plugins = ["search_fixtures", "search_query_fixtures"]  # built_index, live_server, query_index, query_server
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason=f"{CHROMIUM} is absent (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def hits(page, modality):
    return page.eval_on_selector_all(
        f'section[data-modality="{modality}"] .hit',
        "els => els.map(e => ({path: e.dataset.path, score: Number(e.querySelector('.score').textContent)}))")


def until(page, expression, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)


def test_page_text_and_file_queries(browser, live_server, built_index, tmp_path):
    index, collection, _ = built_index
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(live_server.url + "/")
    page.wait_for_selector("#modalities input")  # /api/info answered
    assert "6 image" in page.text_content("#info") and "1 video" in page.text_content("#info")
    page.fill("#text", "an elephant walking in the grass")
    page.click("#go")
    page.wait_for_selector('section[data-modality="image"] .hit')
    assert "results for" in page.text_content("#status")
    images = hits(page, "image")
    assert len(images) == 6 and all(os.path.exists(h["path"]) for h in images)
    assert [h["score"] for h in images] == sorted((h["score"] for h in images), reverse=True)
    texts = hits(page, "text")
    assert texts[0]["path"] == str(collection / "captions.tsv") and texts[0]["score"] == pytest.approx(1, abs=1e-3)
    assert page.locator('section[data-modality="text"] .snippet').first.text_content() == \
        "an elephant walking in the grass"
    assert page.eval_on_selector_all("section", "els => els.map(e => e.dataset.modality)") == \
        ["image", "video", "audio", "text"]
    # every thumbnail arrived and decoded, but the symlink out of the roots (403): "not served"
    # (selectors and evaluate only: wait_for_function evals a string, which the page's CSP forbids)
    page.wait_for_selector(".hit .missing")
    until(page, "Array.from(document.querySelectorAll('section img')).every(i => i.complete)")
    loaded = page.eval_on_selector_all("section img", "els => els.map(i => [i.closest('.hit').dataset.path, "
                                                      "i.naturalWidth > 0])")
    assert len(loaded) == 5 and all(ok for _, ok in loaded)
    missing = page.eval_on_selector_all(".hit .missing", "els => els.map(e => e.closest('.hit').dataset.path)")
    assert missing == [str(collection / "leak.png")]
    assert page.locator('section[data-modality="audio"] audio').count() == 3
    assert page.locator('section[data-modality="video"] video[poster^="/thumb/"]').count() == 1
    page.screenshot(path=str(tmp_path / "search_text_query.png"), full_page=True)

    page.set_input_files("#file", str(MEDIA / "dog.flac"))
    page.wait_for_selector("#status:has-text('audio file dog.flac')")
    audio = hits(page, "audio")
    assert audio[0]["path"] == str(MEDIA / "dog.flac") and audio[0]["score"] == pytest.approx(1, abs=1e-3)
    assert len(hits(page, "image")) == 6  # sound -> images: the shared space
    shot = tmp_path / "search_file_query.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshots: {tmp_path / 'search_text_query.png'} {shot}")

    page.set_input_files("#file", str(MEDIA / "dog.JPEG"))  # over the test server's upload limit
    page.wait_for_selector("#status.error")
    assert "413" in page.text_content("#status")
    assert errors == []
    page.close()


def names(page, modality="image"):
    return [os.path.basename(h["path"]) for h in hits(page, modality)]


def only_modality(page, modality):
    for box in page.query_selector_all("#modalities input"):
        if box.is_checked() != (box.get_attribute("value") == modality):
            box.click()


def test_page_compound_filters_pages_like_and_duplicates(browser, query_server, query_index, tmp_path):
    index, library = query_index
    page = browser.new_page(viewport={"width": 1200, "height": 1000})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(query_server.url + "/")
    page.wait_for_selector("#modalities input")
    only_modality(page, "image")
    shots = []

    def shot(name):
        shots.append(tmp_path / name)
        page.screenshot(path=str(shots[-1]), full_page=True)

    # a compound query: 2 x "night" + an uploaded sound, in the scenes folder
    page.fill("#text", "night")
    page.fill("#weight", "2")
    page.click("#add-term")
    page.select_option(".term .kind", "file")
    page.set_input_files(".term .upload", str(library / "sounds" / "cow.flac"))
    page.fill("#folder", str(library / "scenes"))
    page.select_option("#k", "24")
    page.click("#go")
    page.wait_for_selector("#status:has-text('2 × “night” + audio file cow.flac')")
    status, expected = post_json(query_server.url, {"terms": [{"text": "night", "weight": 2},
                                                              {"id": vector_id(index, library / "sounds" / "cow.flac")}],
                                                    "modalities": ["image"], "k": 24,
                                                    "folder": str(library / "scenes")})
    assert status == 200 and len(names(page)) == 2 * SCENES
    assert names(page) == [os.path.basename(h["path"]) for h in expected["results"]["image"]]
    assert [n.split("_")[0] for n in names(page)[:3]] == ["night"] * 3
    shot("search_compound.png")

    # filters: a date range (the day scenes were taken in 2024), no extra term
    page.click(".term .remove")
    page.fill("#weight", "1")
    page.fill("#text", "a photo")
    page.fill("#folder", "")
    page.fill("#since", "2024-01-01")
    page.fill("#until", "2024-12-31")
    page.click("#go")
    page.wait_for_selector("#status:has-text('“a photo”')")
    assert sorted(names(page)) == [f"day_{i}.png" for i in range(SCENES)]
    shot("search_filters.png")

    # pages: three at a time, "More" twice, the same as one request of nine
    page.fill("#since", "")
    page.fill("#until", "")
    page.select_option("#k", "3")
    page.fill("#text", "a dog")
    page.click("#go")
    page.wait_for_selector("#status:has-text('“a dog”')")
    section = 'section[data-modality="image"]'
    assert len(names(page)) == 3 and page.text_content(f"{section} h2") == "Image (3 of 29)"
    for shown in (6, 9):
        page.click(f"{section} button.more")
        until(page, f"document.querySelectorAll('{section} .hit').length === {shown}")
    status, nine = post_json(query_server.url, {"text": "a dog", "modalities": ["image"], "k": 9})
    assert names(page) == [os.path.basename(h["path"]) for h in nine["results"]["image"]]
    assert page.text_content(f"{section} h2") == "Image (9 of 29)"
    shot("search_pages.png")

    # more like this on the elephant photo
    photos_only = str(library / "photos")
    page.fill("#folder", photos_only)
    page.select_option("#k", "12")
    page.click("#go")
    until(page, "document.querySelectorAll('.hit[data-path$=\"elephant.JPEG\"] button.like').length === 1")
    page.fill("#folder", "")
    page.click('.hit[data-path$="elephant.JPEG"] button.like')
    page.wait_for_selector("#status:has-text('like elephant.JPEG')")
    top = hits(page, "image")
    assert top[0]["path"] == str(library / "photos" / "elephant.JPEG") and top[0]["score"] == pytest.approx(1, abs=1e-3)
    assert {"elephant_q10.jpg", "elephant_half.png", "elephant_crop.jpg"} <= set(names(page)[:4])
    shot("search_more_like_this.png")

    # the near-duplicate groups: the same as the API's, thumbnails shown
    page.click("#dups-go")
    page.wait_for_selector("#status:has-text('groups of near-duplicates')")
    shown = page.eval_on_selector_all(
        'section[data-modality="image"] .dup-group',
        "gs => gs.map(g => Array.from(g.querySelectorAll('.hit')).map(h => h.dataset.path))")
    code, data = raw(query_server, "GET", "/api/duplicates?" + urllib.parse.urlencode(
        {"threshold": page.input_value("#threshold"), "modalities": "image"}))
    assert code == 200 and shown == [[e["path"] for e in g] for g in json.loads(data)["groups"]["image"]]
    dog = next(g for g in shown if str(library / "photos" / "dog.JPEG") in g)
    assert {os.path.basename(p) for p in dog} >= {"dog.JPEG", "dog_same.jpg", "dog_q10.jpg", "dog_half.png",
                                                 "dog_crop.jpg"}
    until(page, "Array.from(document.querySelectorAll('.dup-group img')).every(i => i.complete)")
    assert page.eval_on_selector_all(".dup-group img", "els => els.every(i => i.naturalWidth > 0)")
    shot("search_duplicates.png")
    assert errors == []
    print("screenshots:", *shots)
    page.close()
