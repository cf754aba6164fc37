"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from ichseg.data.synth import write_dataset

TINY_SHAPE = (64, 64, 24)
TINY_SPACING = (3.6, 3.6, 5.0)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the preprocessed-case cache of the whole suite in a temporary folder, never in the
    user's ~/.cache, so tests neither read stale entries nor leave files behind. Subprocesses
    inherit the variable."""
    import os

    previous = os.environ.get("ICHSEG_CACHE")
    os.environ["ICHSEG_CACHE"] = str(tmp_path_factory.mktemp("ichseg_cache"))
    yield
    if previous is None:
        os.environ.pop("ICHSEG_CACHE", None)
    else:
        os.environ["ICHSEG_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic cases (64 x 64 x 24 at 3.6 x 3.6 x 5 mm, seed 0) in the generic layout.

    Shared by the session: treat it as read-only, and copy it before changing anything in it.
    """
    root = tmp_path_factory.mktemp("tiny_dataset")
    write_dataset(root, 6, seed=0, shape=TINY_SHAPE, spacing=TINY_SPACING)
    return root


@pytest.fixture
def write_small_case():
    """Write a small CT-like image (int16 HU with air and bone) and its label as NIfTI, with
    nibabel alone: `write(image_path, label_path, label_value=1, affine=None)`.

    For tests of the dataset layouts and checks, which need readable files, not anatomy.
    """
    import nibabel as nib
    import numpy as np

    def write(image: Path, label: Path | None, label_value: int = 1,
              affine: np.ndarray | None = None) -> None:
        affine = np.diag([0.5, 0.5, 5.0, 1.0]) if affine is None else affine
        hu = np.full((16, 16, 6), 40, dtype=np.int16)
        hu[:2], hu[-2:] = -1000, 1200
        image.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(hu, affine), image)
        if label is not None:
            codes = np.zeros(hu.shape, dtype=np.uint8)
            codes[6:9, 6:9, 2:4] = label_value
            label.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(codes, affine), label)

    return write
