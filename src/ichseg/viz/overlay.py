"""One PNG per predicted case: brain-window axial slices with the prediction outlined.

Displayed the way a radiologist reads a head CT: axial slices seen from the feet, the patient's
right on the image's left and anterior at the top, whatever the file's voxel order (the scan is
first reoriented to RAS with its affine), with square millimetres (pixel aspect from the spacing).
The slices go through the largest lesion (26-connected), its biggest cross-section included; a
scan without any lesion shows slices spread evenly through the head.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.lines import Line2D
from scipy import ndimage

from ichseg.data.ct import reorient_to_ras
from ichseg.data.io import Volume
from ichseg.evaluation.metrics import label_volumes_ml
from ichseg.viz.figure import new_figure, save_figure

BRAIN_WINDOW_HU = (0.0, 80.0)  # level 40, width 80
# Outline colours per label code: distinct on a grey CT and for the common colour deficiencies.
SUBTYPE_COLOURS = {1: "#ff3b30", 2: "#ffd60a", 3: "#32d2ff", 4: "#ff4fd8", 5: "#7cff4f"}
BINARY_COLOUR = "#ff3b30"
SLICES_SHOWN = 4
# Slices with at least this share of voxels denser than air hold head, not just the table.
_HEAD_HU, _HEAD_FRACTION = -500.0, 0.02
_CROP_MARGIN_MM = 8.0


def _pick_slices(labels: np.ndarray, hu: np.ndarray, count: int) -> list[int]:
    """Axial slice indices (RAS order, last axis) to show, ascending."""
    depth = labels.shape[2]
    components, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if n == 0:
        head = np.flatnonzero((hu > _HEAD_HU).mean(axis=(0, 1)) >= _HEAD_FRACTION)
        low, high = (int(head[0]), int(head[-1])) if head.size else (0, depth - 1)
        # The middle of the head, where most bleeds are; its extreme slices are skull and air.
        picks = np.linspace(low + 0.2 * (high - low), low + 0.8 * (high - low), count)
        return sorted({int(round(p)) for p in picks})
    sizes = np.bincount(components.ravel())[1:]
    largest = components == int(np.argmax(sizes)) + 1
    area = largest.sum(axis=(0, 1))
    extent = np.flatnonzero(area)
    chosen = {int(round(p)) for p in np.linspace(extent[0], extent[-1], count)}
    biggest = int(np.argmax(area))
    if biggest not in chosen:
        chosen.remove(min(chosen, key=lambda z: abs(z - biggest)))
        chosen.add(biggest)
    # A lesion on fewer slices than shown: add its neighbours above and below for context.
    step = 1
    while len(chosen) < min(count, depth):
        for z in (extent[0] - step, extent[-1] + step):
            if 0 <= z < depth and len(chosen) < count:
                chosen.add(int(z))
        step += 1
    return sorted(chosen)


def _crop_in_plane_to_head(hu: np.ndarray, codes: np.ndarray, spacing: np.ndarray,
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Cut the air around the head (same box on every slice), so the brain fills the panels."""
    head = (hu > _HEAD_HU).any(axis=2)
    if not head.any():
        return hu, codes
    box = []
    for axis in (0, 1):
        hits = np.flatnonzero(head.any(axis=1 - axis))
        margin = int(np.ceil(_CROP_MARGIN_MM / spacing[axis]))
        box.append(slice(max(int(hits[0]) - margin, 0), int(hits[-1]) + margin + 1))
    return hu[box[0], box[1]], codes[box[0], box[1]]


def _radiological(slice_ras: np.ndarray) -> np.ndarray:
    """An axial (x: to the right, y: to the front) slice -> image rows front to back, columns
    from the patient's right to left."""
    return slice_ras.T[::-1, ::-1]


def draw_overlay(image: Volume, labels: np.ndarray, path: str | Path, case_id: str,
                 class_names: Mapping[int, str] | None = None) -> Path:
    """Write the overlay PNG of one case; `labels` lies on `image`'s voxel grid.

    `class_names` maps label codes to names (default: code 1 is "hemorrhage"); with more than one
    class, each is outlined in its own colour and named in a legend.
    """
    class_names = dict(class_names or {1: "hemorrhage"})
    if tuple(labels.shape) != tuple(image.array.shape):
        raise ValueError(f"labels of shape {labels.shape} do not match the image's "
                         f"{image.array.shape}")
    hu, orientation = reorient_to_ras(np.asarray(image.array), image.affine)
    codes, _ = reorient_to_ras(np.asarray(labels), image.affine)
    # Spacing along the RAS-ordered axes: native axis i went to RAS axis orientation[i, 0].
    spacing = np.empty(3)
    spacing[orientation[:, 0].astype(int)] = image.spacing
    slices = _pick_slices(codes, hu, SLICES_SHOWN)
    hu, codes = _crop_in_plane_to_head(hu, codes, spacing)
    # The slice number a viewer of the original file shows (1-based, in the file's own order).
    native_axis = int(np.flatnonzero(orientation[:, 0] == 2)[0])
    flipped = orientation[native_axis, 1] < 0
    depth = codes.shape[2]

    colours = ({1: BINARY_COLOUR} if len(class_names) == 1 else
               {c: SUBTYPE_COLOURS.get(c, "white") for c in class_names})
    fov_x, fov_y = codes.shape[0] * spacing[0], codes.shape[1] * spacing[1]
    panel = 3.6
    height = panel * fov_y / fov_x + 0.9
    fig = new_figure(panel * len(slices), height, facecolor="black")
    # Room above for the titles and below for the legend (in inches, whatever the height).
    fig.subplots_adjust(left=0.01, right=0.99, wspace=0.04, top=1 - 0.6 / height,
                        bottom=0.3 / height)
    for i, z in enumerate(slices, start=1):
        ax = fig.add_subplot(1, len(slices), i)
        ax.imshow(_radiological(hu[:, :, z]), cmap="gray", vmin=BRAIN_WINDOW_HU[0],
                  vmax=BRAIN_WINDOW_HU[1], aspect=spacing[1] / spacing[0],
                  interpolation="bilinear")
        plane = _radiological(codes[:, :, z])
        rows, cols = plane.shape
        for code in class_names:
            mask = plane == code
            if mask.any():
                # A ring of background around the slice closes outlines that reach its edge.
                ax.contour(np.arange(-1, cols + 1), np.arange(-1, rows + 1),
                           np.pad(mask, 1).astype(np.float32), levels=[0.5],
                           colors=[colours[code]], linewidths=1.3)
        ax.set_xlim(-0.5, cols - 0.5)
        ax.set_ylim(rows - 0.5, -0.5)
        native_z = depth - 1 - z if flipped else z
        ax.set_title(f"slice {native_z + 1}/{depth}", color="white", fontsize=9)
        ax.text(0.02, 0.5, "R", transform=ax.transAxes, color="white", fontsize=10,
                ha="left", va="center")
        ax.text(0.98, 0.5, "L", transform=ax.transAxes, color="white", fontsize=10,
                ha="right", va="center")
        ax.set_axis_off()

    volumes = label_volumes_ml(labels, image.voxel_volume_mm3, class_names)
    total = volumes["total"]
    title = f"{case_id}: hemorrhage {total:.1f} mL" if total > 0 else \
        f"{case_id}: no hemorrhage predicted"
    if len(class_names) > 1 and total > 0:
        title += " (" + ", ".join(f"{class_names[c]} {volumes[class_names[c]]:.1f}"
                                  for c in class_names if volumes[class_names[c]] > 0) + ")"
        present = [c for c in class_names if volumes[class_names[c]] > 0]
        fig.legend(handles=[Line2D([], [], color=colours[c], label=class_names[c])
                            for c in present], loc="lower center", ncol=len(present),
                   frameon=False, labelcolor="white", fontsize=9)
    fig.suptitle(f"{title}   [brain window 40/80, radiological view]", color="white",
                 fontsize=11)
    return save_figure(fig, path)
