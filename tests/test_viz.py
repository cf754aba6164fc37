"""The progress plot (with its resume marks) and the per-case overlay (radiological view)."""

from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from ichseg.data.io import Volume
from ichseg.data.masks import bounding_box
from ichseg.data.synth import CODES
from ichseg.errors import UsageError
from ichseg.viz.overlay import (
    SUBTYPE_COLOURS,
    _pick_slices,
    _title,
    draw_overlay,
)
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


def test_draw_progress_shows_the_pooled_dice_where_the_history_has_it(tmp_path):
    history = {"epoch": [1, 2, 3, 4], "train_loss": [1.0, 0.8, 0.7, 0.6],
               "val_loss": [1.1, 0.9, 0.8, 0.7], "val_dice": [0.1, 0.2, 0.3, 0.4],
               "lr": [0.01] * 4, "session": [1] * 4}
    pooled = {"val_pooled_dice": [0.2, 0.6, 0.3, 0.7],
              "val_pooled_dice_smoothed": [0.2, 0.24, 0.246, 0.291]}
    # A history from before the pooled Dice (no such columns) draws as before.
    old = mpimg.imread(draw_progress(history, tmp_path / "old.png", "val_loss"))
    new = mpimg.imread(draw_progress({**history, **pooled}, tmp_path / "new.png"))

    def orange_pixels(picture):  # matplotlib's "tab:orange" is (1.0, 0.5, 0.05)
        width = picture.shape[1]  # inside the middle panel, the Dice's (the loss has orange too)
        middle = picture[:, int(0.4 * width):int(0.64 * width)]
        r, g, b = middle[..., 0], middle[..., 1], middle[..., 2]
        return int(((r > 0.9) & (g > 0.4) & (g < 0.6) & (b < 0.2)).sum())

    assert orange_pixels(old) == 0 and orange_pixels(new) > 100


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


SUBTYPE_NAMES = {code: name for code, name in CODES.items() if code > 0}


def _pixels_of(picture: np.ndarray, colour: str) -> np.ndarray:
    """(rows, columns) of the pixels drawn in exactly `colour` (the PNG's palette keeps it)."""
    return np.nonzero(np.all(np.abs(picture[..., :3] - to_rgb(colour)) < 1 / 255, axis=-1))


def _ras_head(shape, spacing=(4.0, 4.0, 5.0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(affine, RAS mm coordinates x and y) of a grid centred on 0, and a head (35 HU brain in a
    skull, air around) filling most of it."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.array(shape) - 1) / 2 * np.array(spacing)
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    x, y = xyz[..., 0], xyz[..., 1]
    radius = np.sqrt((x / 70) ** 2 + (y / 85) ** 2)
    hu = np.where(radius < 1.0, 900.0, -1000.0).astype(np.float32)
    hu[radius < 0.9] = 35.0
    return affine, x, y, hu


def test_each_present_subtype_is_outlined_in_its_colour_and_absent_ones_are_not(tmp_path):
    affine, x, y, hu = _ras_head((48, 48, 8))
    labels = np.zeros(hu.shape, np.uint8)
    labels[(x - 30) ** 2 + y**2 < 12**2] = 2  # IPH on the patient's right
    labels[(x + 30) ** 2 + (y - 20) ** 2 < 10**2] = 5  # SDH on the left
    picture = mpimg.imread(draw_overlay(Volume(hu, affine), labels, tmp_path / "c.png", "c",
                                        SUBTYPE_NAMES))
    for code, colour in SUBTYPE_COLOURS.items():
        rows, _ = _pixels_of(picture, colour)
        if code in (2, 5):
            # More than the legend's stroke: outlines on the panels, above the legend.
            assert rows.size > 200 and rows.min() < picture.shape[0] * 0.8
        else:
            assert rows.size == 0, CODES[code]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png"]  # no temporary file left


def test_an_empty_prediction_draws_no_outline(tmp_path):
    affine, _, _, hu = _ras_head((48, 48, 8))
    picture = mpimg.imread(draw_overlay(Volume(hu, affine), np.zeros(hu.shape, np.uint8),
                                        tmp_path / "c.png", "c", SUBTYPE_NAMES))
    for colour in SUBTYPE_COLOURS.values():
        assert _pixels_of(picture, colour)[0].size == 0
    assert (picture[..., :3] > 0.3).mean() > 0.1  # the head is drawn


def test_the_outline_leaves_the_lesion_inside_visible(tmp_path):
    affine, x, y, hu = _ras_head((48, 48, 8))
    lesion = x**2 + y**2 < 25**2
    hu[lesion] = 65.0
    picture = mpimg.imread(draw_overlay(Volume(hu, affine), lesion.astype(np.uint8),
                                        tmp_path / "c.png", "c"))
    rows, columns = _pixels_of(picture, SUBTYPE_COLOURS[1])
    first_panel = columns < picture.shape[1] / 4
    rows, columns = rows[first_panel], columns[first_panel]
    assert rows.size > 50
    # The ring is thin (a drawn line, not the disc filled), and the disc's middle shows the CT.
    height = rows.max() - rows.min()
    assert rows.size < 0.5 * np.pi * (height / 2) ** 2
    centre = picture[(rows.min() + rows.max()) // 2, (columns.min() + columns.max()) // 2, :3]
    assert centre[0] == centre[1] == centre[2] and centre[0] > 0.5  # 65 HU: light grey


def test_labels_beyond_the_head_crop_leave_the_others_outlined(tmp_path):
    affine, x, y, hu = _ras_head((64, 64, 8), spacing=(4.0, 4.0, 5.0))
    labels = np.zeros(hu.shape, np.uint8)
    labels[(x - 30) ** 2 + y**2 < 12**2] = 1
    labels[0, 0, :] = 1  # a false positive in the air, outside the panels' crop
    picture = mpimg.imread(draw_overlay(Volume(hu, affine), labels, tmp_path / "c.png", "c"))
    assert _pixels_of(picture, SUBTYPE_COLOURS[1])[0].size > 100


@pytest.mark.parametrize("voxel_axes", ["xy", "yx"])
def test_panels_keep_the_field_of_view_in_millimetres(tmp_path, voxel_axes):
    # 0.5 mm across (x), 1 mm front to back (y), 64 voxels each: a 32 x 64 mm field of view,
    # whether x or y is the file's first axis.
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    affine[2, 2] = 5.0
    if voxel_axes == "xy":
        affine[0, 0], affine[1, 1] = 0.5, 1.0
    else:
        affine[1, 0], affine[0, 1] = 1.0, 0.5
    hu = np.full((64, 64, 6), 40.0, np.float32)  # tissue everywhere: no crop
    picture = mpimg.imread(draw_overlay(Volume(hu, affine), np.zeros(hu.shape, np.uint8),
                                        tmp_path / "c.png", "c"))
    grey = np.all(np.abs(picture[..., :3] - 0.5) < 0.05, axis=-1)[:, : picture.shape[1] // 4]
    # Rows and columns mostly of the slice's grey (anti-aliased text has a few grey pixels too).
    height = np.count_nonzero(grey.sum(axis=1) > 100)
    width = np.count_nonzero(grey.sum(axis=0) > 100)
    assert height / width == pytest.approx(2.0, abs=0.03)


def test_a_one_voxel_thin_lesion_survives_a_shrunk_display(tmp_path):
    # 1000 voxels across (tissue everywhere, so no crop) shown on about 350 pixels: the streak is
    # a third of a pixel thin.
    hu = np.full((1000, 1000, 2), 35.0, np.float32)
    labels = np.zeros(hu.shape, np.uint8)
    labels[300:700, 451, :] = 1
    affine = np.diag([0.2, 0.2, 5.0, 1.0])
    picture = mpimg.imread(draw_overlay(Volume(hu, affine), labels, tmp_path / "c.png", "c"))
    rows, _ = _pixels_of(picture, SUBTYPE_COLOURS[1])
    assert rows.size > 100


def test_title_gives_volumes_in_millilitres_from_voxel_counts():
    lesion = np.array([2] * 500 + [5] * 250, np.uint8)
    assert _title("c7", lesion, 4.0, SUBTYPE_NAMES) == (
        "c7: hemorrhage 3.0 mL (IPH 2.0, SDH 1.0)", [2, 5])
    assert _title("c7", lesion.clip(0, 1), 4.0, {1: "hemorrhage"}) == (
        "c7: hemorrhage 3.0 mL", [1])
    assert _title("c7", lesion[:0], 4.0, SUBTYPE_NAMES) == ("c7: no hemorrhage predicted", [])


@pytest.mark.parametrize("layout", ["C", "F", "mirrored", "transposed and mirrored"])
def test_bounding_box_is_right_in_any_memory_layout(layout):
    rng = np.random.default_rng(1)
    for _ in range(20):
        values = np.where(rng.random((9, 7, 5)) < 0.03, 3.0, -1.0)
        array = {"C": values, "F": np.asfortranarray(values), "mirrored": values[::-1, :, ::-1],
                 "transposed and mirrored": values[:, ::-1].transpose(2, 0, 1)}[layout]
        hits = np.nonzero(array > 0)
        expected = None if hits[0].size == 0 else tuple(
            slice(int(h.min()), int(h.max()) + 1) for h in hits)
        assert bounding_box(array, 0) == expected
        if expected is not None:
            # Only the first two axes asked for: the last is given whole.
            assert bounding_box(array, 0, axes=(0, 1)) == (
                *expected[:2], slice(0, array.shape[2]))
