"""PRED/index.html in a real headless browser: every case is on the page with its thumbnail and
volumes, and sorting (as a link asks for it) reorders the rows."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_predict import _checkpoint, _phantom_ras, one_thread  # noqa: F401 (autouse)

from ichseg.data.io import write_nifti
from ichseg.inference.predict import predict_cases
from ichseg.viz.report import REPORT

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
BROWSER = next((found for name in BROWSERS if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def predictions(tmp_path_factory) -> Path:
    """Three heads whose voxels differ in size (so their volumes differ), predicted with TTA by
    a network that marks the whole head."""
    root = tmp_path_factory.mktemp("report")
    checkpoint = _checkpoint(root / "everywhere.pt", -5.0, 5.0)
    hu, affine = _phantom_ras()
    for name, scale in (("head_b", 0.8), ("head_c", 1.2), ("head_a", 1.0)):
        write_nifti(root / "in" / f"{name}.nii.gz", hu, affine @ np.diag([scale] * 3 + [1.0]))
    predict_cases(checkpoint, [root / "in"], root / "pred", tta=True, quiet=True,
                  save_uncertainty=True, dicom_seg=True)  # NIfTI inputs: no SEG to write
    return root / "pred"


def _rendered(page: Path, query: str) -> str:
    """The page's DOM after its scripts ran, as headless Chromium sees it."""
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                           "--virtual-time-budget=5000", "--dump-dom", f"{page.as_uri()}{query}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_report_lists_every_case_with_its_figures(predictions):
    with (predictions / "volumes.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    page = (predictions / REPORT).read_text()
    assert "<script src" not in page and "http" not in page  # nothing fetched from elsewhere
    for row in rows:
        overlay = f"overlays/{row['case']}.png"
        assert f'<a href="{overlay}"><img src="{overlay}"' in page
        assert (predictions / overlay).is_file()
        assert f"{float(row['hemorrhage_ml']):.2f}" in page
        assert row["tta_agreement"] == "1.0" and row["unstable"] == "no"
        assert row["dicom_seg"] == "" and not list(predictions.glob("*.dcm"))
        uncertainty = nib.load(predictions / "uncertainty" / f"{row['case']}.nii.gz")
        assert uncertainty.shape == nib.load(row["input"]).shape
        assert 0 < float(np.asarray(uncertainty.dataobj).max()) < 0.5  # logits 5 and -5


@pytest.mark.skipif(BROWSER is None, reason="no chromium binary on this machine (apt-get install "
                                            "chromium); the report is checked without a browser")
def test_report_renders_and_sorts_in_headless_chromium(predictions):
    with (predictions / "volumes.csv").open() as handle:
        volumes = {r["case"]: float(r["hemorrhage_ml"]) for r in csv.DictReader(handle)}
    by_volume = sorted(volumes, key=volumes.get)
    assert by_volume == ["head_b", "head_a", "head_c"]
    page = predictions / REPORT
    # The page is written in input order (head_a, head_b, head_c): neither of the sorted ones.
    for order, expected in (("asc", by_volume), ("desc", by_volume[::-1])):
        dom = _rendered(page, f"?sort=hemorrhage_ml&order={order}")
        assert re.findall(r'<tr data-case="([^"]+)"', dom) == expected, order
        assert f'data-sorted="hemorrhage_ml {order}"' in dom
        # Every case rendered: its thumbnail, linked to the full overlay, and its volume.
        for case in volumes:
            assert f'<img src="overlays/{case}.png"' in dom
            assert f">{volumes[case]:.2f}<" in dom
