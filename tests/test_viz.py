"""The progress plot (with its resume marks) and the per-case overlay (radiological view)."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest

from ichseg.data.io import Volume
from ichseg.errors import UsageError
from ichseg.viz.overlay import _pick_slices, draw_overlay
from ichseg.viz.progress import draw_progress, plot_run, resume_epochs

HISTORY_CSV = """epoch,train_loss,val_loss,val_dice,lr,epoch_seconds,session
1,0.9,0.95,0.10,0.01,3.0,1
2,0.7,0.80,0.30,0.009,3.1,1
3,0.6,,0.45,0.008,3.0,2
4,0.5,0.60,0.50,0.007,3.2,2
5,0.4,0.55,0.62,0.006,3.1,3
"""


def test_resume_epochs_are_where_the_session_changes():
    assert resume_epochs([1, 2, 3, 4, 5], [1, 1, 2, 2, 3]) == [3, 5]
    assert resume_epochs([1, 2, 3], [1, 1, 1]) == []
    assert resume_epochs([], []) == []


def test_plot_run_redraws_progress_png(tmp_path):
    (tmp_path / "history.csv").write_text(HISTORY_CSV)
    path = plot_run(tmp_path)
    assert path == tmp_path / "progress.png"
    picture = mpimg.imread(path)
    assert picture.shape[0] > 200 and picture.shape[1] > 600
    assert picture[..., :3].std() > 0.05  # curves drawn, not a blank canvas
    # Written through a temporary file that is gone afterwards.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv", "progress.png"]


def test_draw_progress_marks_resumes_in_red(tmp_path):
    history = {"epoch": [1, 2, 3, 4], "train_loss": [1.0, 0.8, 0.7, 0.6],
               "val_loss": [1.1, 0.9, 0.8, 0.7], "val_dice": [0.1, 0.2, 0.3, 0.4],
               "lr": [0.01] * 4}
    plain = mpimg.imread(draw_progress({**history, "session": [1, 1, 1, 1]}, tmp_path / "a.png"))
    marked = mpimg.imread(draw_progress({**history, "session": [1, 1, 2, 2]}, tmp_path / "b.png"))

    def red_pixels(picture):  # matplotlib's "tab:red" is (0.84, 0.15, 0.16)
        r, g, b = picture[..., 0], picture[..., 1], picture[..., 2]
        return int(((r > 0.75) & (g < 0.3) & (b < 0.3)).sum())

    assert red_pixels(plain) == 0
    assert red_pixels(marked) > 100


def test_plot_run_without_history_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="history.csv"):
        plot_run(tmp_path)
    (tmp_path / "history.csv").write_text("epoch,train_loss\n")
    with pytest.raises(UsageError, match="no epochs"):
        plot_run(tmp_path)
    assert not (tmp_path / "progress.png").exists()


def _phantom(affine: np.ndarray, right_side: bool) -> tuple[Volume, np.ndarray]:
    """A head (brain 35 HU in a skull) with a bleed on the patient's right or left, in the voxel
    order that `affine` gives."""
    shape = (48, 48, 12)
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    radius = np.sqrt((x / 70) ** 2 + (y / 85) ** 2 + (z / 60) ** 2)
    hu = np.where(radius < 1.0, 900.0, -1000.0).astype(np.float32)
    hu[radius < 0.9] = 35.0
    centre = 35.0 if right_side else -35.0  # RAS: +x is the patient's right
    bleed = (x - centre) ** 2 + y**2 < 15.0**2
    bleed &= np.abs(z) < 12.0
    hu[bleed] = 70.0
    return Volume(hu, affine), bleed.astype(np.uint8)


def _outline_columns(picture: np.ndarray) -> np.ndarray:
    """Columns of the pixels drawn in the binary outline colour (#ff3b30)."""
    r, g, b = picture[..., 0], picture[..., 1], picture[..., 2]
    return np.nonzero((r > 0.85) & (g < 0.4) & (g > 0.1) & (b < 0.3))[1]


@pytest.mark.parametrize(("codes", "right_side"), [("RAS", True), ("LPI", True), ("LPI", False)])
def test_overlay_shows_the_patients_right_on_the_image_left(tmp_path, codes, right_side):
    flips = {"RAS": (1, 1, 1), "LPI": (-1, -1, -1)}[codes]
    affine = np.diag([4.0 * flips[0], 4.0 * flips[1], 5.0 * flips[2], 1.0])
    affine[:3, 3] = -np.array(flips) * np.array([94.0, 94.0, 27.5])  # centre the grid on 0
    image, labels = _phantom(affine, right_side)
    path = draw_overlay(image, labels, tmp_path / "case.png", "case")
    picture = mpimg.imread(path)
    columns = _outline_columns(picture)
    assert columns.size > 50
    # Four panels side by side: within each, the bleed sits on the side of the patient's right
    # (image left) or left (image right).
    panel = picture.shape[1] / 4
    within = (columns % panel) / panel
    if right_side:
        assert np.median(within) < 0.5
    else:
        assert np.median(within) > 0.5


def test_slices_go_through_the_largest_lesion():
    labels = np.zeros((20, 20, 30), dtype=np.uint8)
    labels[5:8, 5:8, 3:4] = 1  # small lesion
    labels[10:15, 10:15, 12:20] = 1  # largest lesion, biggest cross-section at 16
    labels[9:16, 9:16, 16] = 1
    hu = np.zeros(labels.shape, dtype=np.float32)
    picks = _pick_slices(labels, hu, 4)
    assert len(picks) == 4
    assert 16 in picks
    assert all(12 <= z <= 19 for z in picks)
    # No lesion: evenly through the head's slices (here all of them hold tissue).
    empty = _pick_slices(np.zeros_like(labels), hu, 4)
    assert len(empty) == 4 and 0 < empty[0] < empty[-1] < 29
