"""The viewer in a real browser (headless Chromium through Playwright, WebGL2 on SwiftShader): the canvases draw,
a class toggle changes its colour's pixels, a slider moves the axial plane, "Segment" shows its prediction and a bad
folder its error, the static report opens from disk. Skips (saying what to install) without a browser."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from robustness.fake_models import LOADERS, write_spec

from viewer.app import create_app, make_state
from viewer.browser import browser, serve, wait_ready, why_no_browser
from viewer.export import export_report

REASON = why_no_browser()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=f"no browser for the viewer tests: {REASON}"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]
CANVASES = ("axial", "coronal", "sagittal", "render")
REPO = Path(__file__).resolve().parents[2]


def pixels(page, canvas: str) -> np.ndarray:
    """uint8 (H, W, 3) of a canvas as the page shows it."""
    return np.asarray(Image.open(io.BytesIO(page.locator(f"#{canvas}").screenshot())).convert("RGB"))


def drawn(img: np.ndarray) -> float:
    """The fraction of pixels that differ (by more than 30 of 255) from the canvas's most common colour (its
    background): 0 for a blank canvas."""
    flat = img.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    background = colours[counts.argmax()].astype(int)
    return float((np.abs(flat.astype(int) - background).max(-1) > 30).mean())


def colour_count(img: np.ndarray, rgb, tol: float = 0.12) -> int:
    """Pixels whose chromaticity (colour without brightness) is within ``tol`` of ``rgb``'s and that are not grey:
    a class's colour blended over a grey scan or shaded on a mesh keeps its chromaticity."""
    x = img.astype(np.float64)
    s = x.sum(-1, keepdims=True)
    chroma = x / np.maximum(s, 1)
    target = np.asarray(rgb, np.float64) / max(sum(rgb), 1)
    saturated = (x.max(-1) - x.min(-1)) > 25
    return int((saturated & (np.abs(chroma - target).max(-1) < tol * target.max())).sum())


def settle(page) -> None:
    """Let NiiVue draw what the last event asked for."""
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    time.sleep(0.2)


@pytest.fixture(scope="module")
def chromium():
    with browser() as b:
        yield b


@pytest.fixture(scope="module")
def site(nnunet_study, tmp_path_factory, chromium):
    tmp = tmp_path_factory.mktemp("viewer_site")
    state = make_state(nnunet_study["work"], nnunet_study["pred"], runs_dir=tmp / "runs", loaders=LOADERS)
    with serve(create_app(state)) as url:
        yield {"url": url, "state": state, "tmp": tmp}


@pytest.fixture
def page(chromium):
    p = chromium.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    p.close()
    assert not errors, errors


def test_planes_and_3d_draw_and_a_class_toggle_changes_its_colour(site, page) -> None:
    page.goto(site["url"] + "?case=case_001")
    wait_ready(page, case="case_001")
    settle(page)
    colours = page.evaluate("viewer.study.colours")
    before = {c: pixels(page, c) for c in CANVASES}
    for c, img in before.items():  # drawn: a scan or surfaces, not a blank canvas
        assert drawn(img) > (0.2 if c != "render" else 0.03), c
    counts = {c: [colour_count(before[c], col) for col in colours] for c in ("axial", "render")}
    assert min(counts["render"]) > 200  # every class has its surface in 3D
    assert counts["axial"][0] > 200  # the liver overlay on the axial plane

    page.locator("#cls-0").click()  # hide the liver
    settle(page)
    after = {c: pixels(page, c) for c in ("axial", "render")}
    for c in ("axial", "render"):
        now = [colour_count(after[c], col) for col in colours]
        assert now[0] < 0.1 * counts[c][0], (c, counts[c], now)  # its colour is gone
    assert colour_count(after["render"], colours[2]) > 0.5 * counts["render"][2]  # the others stay

    page.locator("#cls-0").click()
    settle(page)
    assert colour_count(pixels(page, "render"), colours[0]) > 0.8 * counts["render"][0]


def test_slider_moves_the_axial_plane_and_the_scores_show(site, page) -> None:
    page.goto(site["url"] + "?case=case_002&mode=diff")
    wait_ready(page, case="case_002")
    settle(page)
    first = pixels(page, "axial")
    caption = page.inner_text("#pos-axial")
    slider = page.locator("#slider-axial")
    slider.fill("2")
    settle(page)
    moved = pixels(page, "axial")
    assert page.inner_text("#pos-axial") == "3 / 16" != caption
    assert np.abs(moved.astype(int) - first.astype(int)).max(-1).__gt__(30).mean() > 0.02
    rows = page.locator("#scores tr[data-class]")
    assert rows.count() == 3
    state = site["state"]
    dsc = state.study.scores("case_002")["classes"]["liver"]["dsc"]
    assert page.inner_text("#scores tr[data-class=liver] td:nth-child(2)") == f"{dsc:.4f}"
    legend = page.inner_text("#diff-legend")
    assert "false positive" in legend and page.is_visible("#diff-legend")


def test_segment_shows_its_prediction_and_a_bad_folder_its_error(site, page, scans_folder, monkeypatch) -> None:
    monkeypatch.chdir(site["tmp"])
    spec = write_spec(site["tmp"])
    page.goto(site["url"])
    wait_ready(page)
    page.fill("#seg-folder", str(site["tmp"] / "no_such_scans"))
    page.fill("#seg-spec", str(spec))
    page.click("#seg-button")
    page.wait_for_selector("#seg-message.error", timeout=20000)
    assert "no_such_scans: no such folder" in page.inner_text("#seg-message")

    page.fill("#seg-folder", str(scans_folder))
    page.click("#seg-button")
    page.wait_for_selector("body[data-segmented]", timeout=120000)
    wait_ready(page, case="case_001")
    settle(page)
    keys = page.eval_on_selector_all("#cases tbody tr", "rows => rows.map(r => r.dataset.key)")
    assert keys == ["case_001", "case_002"]
    assert page.inner_text("#seg-message").startswith("done:")
    colours = page.evaluate("viewer.study.colours")
    shown = pixels(page, "render")
    assert max(colour_count(shown, col) for col in colours) > 200  # the predicted classes in 3D
    assert "no truth" in page.inner_text("#scores-note")


def test_static_report_opens_from_disk(nnunet_study, tmp_path, page) -> None:
    out = export_report(nnunet_study["work"], tmp_path / "report", nnunet_study["pred"], cases=["case_003"])
    page.goto((out / "index.html").as_uri())
    wait_ready(page, case="case_003")
    settle(page)
    assert page.evaluate("document.body.classList.contains('static')")
    assert not page.is_visible("#segment-panel")
    for c in CANVASES:
        assert drawn(pixels(page, c)) > (0.2 if c != "render" else 0.03), c
    assert page.locator("#scores tr[data-class]").count() == 3


def test_screenshot_command_writes_the_picture(nnunet_study, tmp_path) -> None:
    """``python -m viewer --screenshot`` (its own process: Playwright's sync API takes the thread's event loop)."""
    png = tmp_path / "view.png"
    args = ["--work", str(nnunet_study["work"]), "--pred", str(nnunet_study["pred"]), "--screenshot", str(png)]
    args += ["--case", "case_004", "--mode", "diff", "--hide", "spleen", "--size", "1000x700"]
    r = subprocess.run([sys.executable, "-m", "viewer", *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape == (700, 1000, 3) and drawn(img) > 0.15  # off the page background: the scans, panels, text
