"""PRED/viewer/<case>.html: what a page carries, and the page in a real headless browser.

The browser test opens pages from file:// with Chromium's network switched off: a predicted
phantom (its head in the lower slices, air above: the network marks the head) reached from
PRED/index.html, and a synthetic head whose drawn hemorrhages sit on a few of its slices, under a
case name made of HTML. The screenshots are read back as pixels: the overlay's red where the label
map has blood, none where it has none, grey tissue on the canvas.
"""

from __future__ import annotations

import gzip
import html
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from browser import BROWSER, Chromium, file_url
from test_predict import _checkpoint, _phantom_ras, one_thread  # noqa: F401 (autouse)

from ichseg.data.io import Volume, write_nifti
from ichseg.data.synth.case import make_case
from ichseg.inference.predict import predict_cases
from ichseg.viz.overlay import BINARY_COLOUR, SUBTYPE_COLOURS
from ichseg.viz.report import REPORT, VIEWER_DIR, case_href, write_report
from ichseg.viz.viewer import (
    NIIVUE_BUNDLE,
    VENDOR,
    niivue_version,
    notebook_viewer,
    page_contents,
    write_viewer,
)

HOSTILE = "<img src=x onerror=alert(1)> & 'q' \"d\" #1 %41 <script>alert(2)"
SUBTYPES = {1: "EDH", 2: "IPH", 3: "IVH", 4: "SAH", 5: "SDH"}
HEAD_SLICES = 10


def _embedded(page: Path, element_id: str) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(page_contents(page)[1][element_id]))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Volume, np.ndarray]:
    """A synthetic head (hemorrhages on some of its slices) viewed as if predicted, under a name
    made of HTML, in a folder whose index lists it."""
    out = tmp_path_factory.mktemp("viewer")
    case = make_case(4, shape=(96, 96, 16), spacing=(2.4, 2.4, 5.0))  # blood on some slices
    assert case.label.any() and not case.label.any(axis=(0, 1)).all()
    volume = Volume(case.hu.astype(np.float32), case.affine)
    uncertainty = np.linspace(0, 0.6, case.hu.size, dtype=np.float32).reshape(case.hu.shape)
    row = {"case": HOSTILE, "hemorrhage_ml": 12.5, "EDH_ml": 12.5, "confidence": 0.9,
           "confidence_basis": "mean <b>probability</b>", "unstable": True, "empty": False}
    row["viewer"] = str(write_viewer(out, HOSTILE, volume, case.label, row, SUBTYPES, uncertainty))
    write_report(out, [row], SUBTYPES)
    return out, volume, case.label


def test_a_page_carries_its_scan_labels_and_uncertainty(synthetic):
    out, volume, labels = synthetic
    path = out / VIEWER_DIR / f"{HOSTILE}.html"
    page = path.read_text(encoding="utf-8")
    scan = _embedded(path, "scan")
    assert scan.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(scan.dataobj), volume.array)
    np.testing.assert_allclose(scan.affine, volume.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(_embedded(path, "labels").dataobj), labels)
    uncertainty = np.asarray(_embedded(path, "uncertainty").dataobj)
    expected = np.linspace(0, 0.6, labels.size).reshape(labels.shape)
    assert np.abs(uncertainty - expected).max() <= 0.5 / 254 + 1e-6
    # NiiVue and its licences beside the page, the page's only script from a file.
    assert (out / VIEWER_DIR / NIIVUE_BUNDLE).read_bytes() == (VENDOR / NIIVUE_BUNDLE).read_bytes()
    assert "BSD 2-Clause" in (out / VIEWER_DIR / "niivue-LICENSE.txt").read_text()
    assert (VENDOR / "VERSION").read_text().startswith(f"@niivue/niivue {niivue_version()}\n")
    assert re.findall(r"<script src=\"([^\"]*)\"", page) == [NIIVUE_BUNDLE]
    assert "http:" not in page and "https:" not in page
    legend = page_contents(path)[0]["classes"]
    assert [(c["code"], c["name"]) for c in legend] == list(SUBTYPES.items())
    assert legend[0]["ml"] == 12.5 and len({c["colour"] for c in legend}) == 5


def test_names_and_text_reach_the_page_only_escaped(synthetic):
    out, _, _ = synthetic
    path = out / VIEWER_DIR / f"{HOSTILE}.html"
    page = path.read_text(encoding="utf-8")
    assert page_contents(path)[0]["case"] == HOSTILE
    assert "<img" not in page and "<b>" not in page
    assert page.count("</script>") == page.count("<script")  # none closed early
    assert f"<h1>{html.escape(HOSTILE)}</h1>" in page
    assert "mean &lt;b&gt;probability&lt;/b&gt;" in page
    index = (out / REPORT).read_text(encoding="utf-8")
    link = case_href(VIEWER_DIR, HOSTILE, ".html")
    assert "<" not in link and "#" not in link and '"' not in link
    assert f'href="{html.escape(link, quote=True)}"' in index
    assert "<img src=x" not in index


@pytest.fixture(scope="module")
def predicted(tmp_path_factory) -> Path:
    """A phantom head on the lower HEAD_SLICES of 24 slices (air above), predicted with TTA and
    an uncertainty map by a network that marks the whole head."""
    root = tmp_path_factory.mktemp("predicted")
    hu, affine = _phantom_ras()
    tall = np.full((*hu.shape[:2], 24), -1000, dtype=np.int16)
    tall[..., :HEAD_SLICES] = hu
    write_nifti(root / "in" / "head.nii.gz", tall, affine)
    predict_cases(_checkpoint(root / "everywhere.pt", -5.0, 5.0), [root / "in"], root / "pred",
                  tta=True, quiet=True, save_uncertainty=True)
    return root / "pred"


def test_predict_no_viewer_writes_no_page_and_links_none(predicted):
    from ichseg.cli import main

    root = predicted.parent
    assert main(["predict", "--checkpoint", str(root / "everywhere.pt"), str(root / "in"),
                 "--out", str(root / "no_viewer"), "--no-viewer"]) == 0
    out = root / "no_viewer"
    assert (out / "head.nii.gz").is_file() and not (out / VIEWER_DIR).exists()
    assert 'class="viewer"' not in (out / REPORT).read_text()
    assert "viewer/" not in (out / "volumes.csv").read_text()


def test_every_predicted_case_has_a_viewer_linked_from_the_index(predicted):
    index = (predicted / REPORT).read_text()
    assert '<a class="viewer" href="viewer/head.html"' in index
    page = predicted / VIEWER_DIR / "head.html"
    labels = nib.load(predicted / "head.nii.gz")
    np.testing.assert_array_equal(np.asarray(_embedded(page, "labels").dataobj),
                                  np.asarray(labels.dataobj))
    uncertainty = np.asarray(nib.load(predicted / "uncertainty" / "head.nii.gz").dataobj)
    assert np.abs(np.asarray(_embedded(page, "uncertainty").dataobj) - uncertainty).max() < 0.003


def test_the_notebook_widget_shows_what_the_page_carries(synthetic):
    pytest.importorskip("ipyniivue", reason="ipyniivue (ichseg[notebook]) is not installed")
    out, _, _ = synthetic
    page = out / VIEWER_DIR / f"{HOSTILE}.html"
    viewer = notebook_viewer(page)
    scan, labels, uncertainty = viewer.volumes
    assert (scan.data, labels.data) == tuple(page_contents(page)[1][k] for k in ("scan", "labels"))
    assert (scan.colormap, scan.cal_min, scan.cal_max) == ("gray", 0.0, 80.0)
    assert labels.colormap_label.labels == ["background", *SUBTYPES.values()]
    assert uncertainty.opacity == 0.0 and viewer.opts.is_radiological_convention


def _pixels_of(picture, colour: str) -> int:
    """Pixels of this class colour (#rrggbb), whatever its opacity over the grey scan: a strong
    colour (grey has none) whose hue, the channels above the lowest one, is the class's."""
    rgb = np.asarray(picture).astype(float)
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=float)
    chroma, target = rgb - rgb.min(axis=-1, keepdims=True), target - target.min()
    strength = np.linalg.norm(chroma, axis=-1)
    cosine = chroma @ target / np.maximum(strength * np.linalg.norm(target), 1e-9)
    return int(np.count_nonzero((strength > 60) & (cosine > 0.97)))


def _grey_pixels(picture) -> int:
    rgb = np.asarray(picture).astype(int)
    grey = (np.ptp(rgb, axis=-1) < 8) & (rgb[..., 0] > 40)
    return int(np.count_nonzero(grey))


def _open(browser: Chromium, url: str) -> dict:
    """Open a viewer page and wait for it; the canvas's rectangle."""
    browser.open(url)
    assert browser.wait_for("document.body && document.body.getAttribute('data-state')") == "ready"
    return browser.evaluate("(() => { const r = document.getElementById('gl')"
                            ".getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width,"
                            " height: r.height}; })()")


def _slice_shown(browser: Chromium) -> str:
    return browser.evaluate("document.getElementById('slice-index').textContent")


def _go_to_slice(browser: Chromium, index: int) -> None:
    """Move the page's slice slider as a person would."""
    browser.evaluate(f"(() => {{ const s = document.getElementById('slice'); s.value = {index};"
                     " s.dispatchEvent(new Event('input')); })()")


@pytest.mark.slow  # two pages drawn by software WebGL: 10 to 20 s on the 2-core machine
@pytest.mark.skipif(BROWSER is None, reason="no chromium binary on this machine (apt-get install "
                                            "chromium); the pages are checked without a browser")
def test_viewer_pages_in_headless_chromium_offline(predicted, synthetic):
    with Chromium() as browser:
        # From the index, as a person clicks through to the case.
        browser.open(file_url(predicted / REPORT))
        browser.wait_for("!!document.querySelector('a.viewer')")
        browser.evaluate("document.querySelector('a.viewer').click()")
        browser.wait_for("location.pathname.endsWith('/viewer/head.html')")
        canvas = _open(browser, browser.evaluate("location.href"))
        # It opens on the middle of the labelled slices (the head's, 0-based 0..9 or so).
        assert re.fullmatch(r"axial \d+ / 24", _slice_shown(browser))
        opened = int(_slice_shown(browser).split()[1]) - 1
        assert 2 <= opened < HEAD_SLICES
        on_head = browser.screenshot(canvas)
        assert _grey_pixels(on_head) > 1000  # the scan is drawn
        assert _pixels_of(on_head, BINARY_COLOUR) > 500  # and the label map's outline on it
        readout = browser.evaluate("document.getElementById('readout').textContent")
        assert "HU 30" in readout and "hemorrhage" in readout

        _go_to_slice(browser, 20)
        assert _slice_shown(browser) == "axial 21 / 24"
        assert _pixels_of(browser.screenshot(canvas), BINARY_COLOUR) == 0  # air: no label
        # The mouse wheel over the image scrolls to a neighbouring slice.
        browser.send("Input.dispatchMouseEvent", type="mouseWheel", deltaX=0, deltaY=120,
                     x=canvas["x"] + canvas["width"] / 2, y=canvas["y"] + canvas["height"] / 2)
        deadline = time.monotonic() + 10
        while _slice_shown(browser) == "axial 21 / 24" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _slice_shown(browser) in ("axial 20 / 24", "axial 22 / 24")

        # The synthetic head: blood on some slices only, tissue on all of them; a hostile name.
        out, _, labels = synthetic
        canvas = _open(browser, file_url(out / VIEWER_DIR / f"{HOSTILE}.html"))
        assert browser.evaluate("document.querySelector('h1').textContent") == HOSTILE
        assert browser.evaluate("document.querySelectorAll('img, script:not([type]):not([src])')"
                                ".length") == 1  # only the page's own script
        browser.evaluate("document.querySelector('input[name=style][value=fill]').click()")
        # The slice with the most blood, in the colour of its commonest subtype; a slice of the
        # head without blood shows none of the subtypes' colours.
        blood_slice = int(np.argmax((labels > 0).sum(axis=(0, 1))))
        codes, counts = np.unique(labels[..., blood_slice][labels[..., blood_slice] > 0],
                                  return_counts=True)
        colour = SUBTYPE_COLOURS[int(codes[np.argmax(counts)])]
        blood = np.flatnonzero(labels.any(axis=(0, 1)))
        clear = [z for z in range(3, labels.shape[2]) if z not in blood]
        _go_to_slice(browser, blood_slice)
        picture = browser.screenshot(canvas)
        assert _grey_pixels(picture) > 1000
        assert _pixels_of(picture, colour) > 100
        if colour != BINARY_COLOUR:
            assert _pixels_of(picture, BINARY_COLOUR) == 0  # no class drawn in another's colour
        _go_to_slice(browser, clear[0])
        picture = browser.screenshot(canvas)
        assert _grey_pixels(picture) > 1000, clear[0]
        assert all(_pixels_of(picture, c) == 0 for c in (*SUBTYPE_COLOURS.values(), BINARY_COLOUR))

        assert browser.problems() == []
        assert not [e for e in browser.events if e.get("method") == "Page.javascriptDialogOpening"]
        # Nothing but the pages, the bundle beside them and data: URLs NiiVue makes itself.
        assert {url.split(":")[0] for url in browser.requests()} <= {"file", "data"}
