"""One PNG per predicted case: brain-window axial slices with the prediction outlined.

Displayed the way a radiologist reads a head CT: axial slices seen from the feet, the patient's
right on the image's left and anterior at the top, whatever the file's voxel order (the scan is
first reoriented to RAS with its affine), with square millimetres (pixel aspect from the spacing).
The slices go through the largest lesion (26-connected), its biggest cross-section included; a
scan without any lesion shows slices spread evenly through the head.

The montage is composed directly as pixels and written with Pillow: `ichseg predict` draws one per
scan, and matplotlib (axes, vector contours, text layout) cost about as much as the network's
sliding window. Each panel is the cropped slice resized to a fixed display box with its mm aspect;
an outline is the pixels on either side of a class's boundary on that display grid (2 px, like a
drawn contour line); text uses matplotlib's DejaVu Sans, as the other pictures do.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageColor, ImageDraw, ImageFont

from ichseg.data.ct import reorient_to_ras
from ichseg.data.io import Volume
from ichseg.data.masks import bounding_box, label_volumes_ml, largest_lesion
from ichseg.viz.figure import save_png

BRAIN_WINDOW_HU = (0.0, 80.0)  # level 40, width 80
# Outline colours per label code: distinct on a grey CT and for the common colour deficiencies.
SUBTYPE_COLOURS = {1: "#ff3b30", 2: "#ffd60a", 3: "#32d2ff", 4: "#ff4fd8", 5: "#7cff4f"}
BINARY_COLOUR = "#ff3b30"
SLICES_SHOWN = 4
# Slices with at least this share of voxels denser than air hold head, not just the table.
_HEAD_HU, _HEAD_FRACTION = -500.0, 0.02
_CROP_MARGIN_MM = 8.0

# Layout in pixels. Each slice is fitted into the display box with its mm aspect and centred in a
# slot of equal width; the montage is exactly one slot per slice wide.
_DISPLAY_BOX = (352, 440)  # (width, height)
_SLOT_WIDTH = 360
_TITLE_BAND, _PANEL_HEADER, _LEGEND_BAND, _BOTTOM_MARGIN = 34, 24, 30, 8
_TITLE_PX, _PANEL_TITLE_PX, _SIDE_PX, _LEGEND_PX = 15, 13, 14, 13
_LEGEND_LINE = (24, 3)  # the coloured stroke before each class name (length, thickness)
_TITLE_MIN_PX = 9
_FONT_FILE = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"

# The PNG has a palette (one byte a pixel: a third of RGB's bytes to compress, 7 ms instead of
# 27 ms for a montage): greys from black to white, then the outline colours.
_OUTLINE_COLOURS = tuple(dict.fromkeys((BINARY_COLOUR, *SUBTYPE_COLOURS.values())))
_GREYS = 256 - len(_OUTLINE_COLOURS)
_WHITE = _GREYS - 1
_PALETTE = [round(255 * i / _WHITE) for i in range(_GREYS) for _ in range(3)] + [
    value for colour in _OUTLINE_COLOURS for value in ImageColor.getrgb(colour)]


def _ink(colour: str) -> int:
    """The palette index of an outline colour ("white" for codes without a colour of their own)."""
    return _GREYS + _OUTLINE_COLOURS.index(colour) if colour in _OUTLINE_COLOURS else _WHITE


def _largest_component_areas(mask: np.ndarray) -> np.ndarray:
    """Voxels on each slice (last axis) of the largest lesion of a 3D mask."""
    return np.count_nonzero(largest_lesion(mask), axis=(0, 1))


def _pick_slices(labels: np.ndarray, hu: np.ndarray, count: int) -> list[int]:
    """Axial slice indices (RAS order, last axis) to show, ascending."""
    depth = labels.shape[2]
    box = bounding_box(labels, 0)
    if box is None:
        return _head_slices(hu, count)
    # Components never reach outside the labels' bounding box: only that is searched.
    area = _largest_component_areas(labels[box] > 0)
    extent = np.flatnonzero(area) + box[2].start
    chosen = {int(round(p)) for p in np.linspace(extent[0], extent[-1], count)}
    biggest = int(np.argmax(area)) + box[2].start
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


def _head_slices(hu: np.ndarray, count: int) -> list[int]:
    """Without a lesion: slices spread through the middle of the head, where most bleeds are (its
    extreme slices are skull and air)."""
    depth = hu.shape[2]
    box = bounding_box(hu, _HEAD_HU)
    low, high = 0, depth - 1
    if box is not None:
        # Voxels outside the box are all air, so counting within it gives each slice's share.
        tissue = np.count_nonzero(hu[box] > _HEAD_HU, axis=(0, 1)) / (hu.shape[0] * hu.shape[1])
        head = np.flatnonzero(tissue >= _HEAD_FRACTION) + box[2].start
        if head.size:
            low, high = int(head[0]), int(head[-1])
    picks = np.linspace(low + 0.2 * (high - low), low + 0.8 * (high - low), count)
    return sorted({int(round(p)) for p in picks})


def _in_plane_head_box(hu: np.ndarray, spacing: np.ndarray) -> tuple[slice, slice]:
    """The head's in-plane extent over all slices plus a margin (the whole plane without a head),
    so that the brain fills the panels; the same box on every slice."""
    box = bounding_box(hu, _HEAD_HU, axes=(0, 1))
    if box is None:
        return slice(0, hu.shape[0]), slice(0, hu.shape[1])
    crop = []
    for axis in (0, 1):
        margin = int(np.ceil(_CROP_MARGIN_MM / spacing[axis]))
        crop.append(slice(max(box[axis].start - margin, 0),
                          min(box[axis].stop + margin, hu.shape[axis])))
    return crop[0], crop[1]


def _labelled_region(labelled: tuple[slice, ...] | None, crop_x: slice,
                     crop_y: slice) -> tuple[slice, slice] | None:
    """The rows and columns of the displayed planes (cropped to the head, radiological) within
    which the labels' RAS bounding box `labelled` lies; None if it lies outside the crop."""
    if labelled is None:
        return None
    footprint = np.zeros((crop_x.stop - crop_x.start, crop_y.stop - crop_y.start), dtype=bool)
    # Labels may reach beyond the crop (a false positive in the air): clip at its start too.
    footprint[max(labelled[0].start - crop_x.start, 0):max(labelled[0].stop - crop_x.start, 0),
              max(labelled[1].start - crop_y.start, 0):max(labelled[1].stop - crop_y.start, 0)] = True
    region = bounding_box(_radiological(footprint), 0)
    return None if region is None else (region[0], region[1])


def _radiological(slice_ras: np.ndarray) -> np.ndarray:
    """An axial (x: to the right, y: to the front) slice -> image rows front to back, columns
    from the patient's right to left."""
    return slice_ras.T[::-1, ::-1]


def _brain_window(hu: np.ndarray) -> np.ndarray:
    """HU -> the palette's grey indices, black at the window's bottom, white at its top."""
    low, high = BRAIN_WINDOW_HU
    step = _WHITE / (high - low)
    scaled = np.multiply(hu, step, dtype=np.float32)  # the one copy of the strided slice
    scaled += 0.5 - low * step  # rounds to the nearest grey on truncation below
    return np.clip(scaled, 0, _WHITE, out=scaled).astype(np.uint8)


def _paint_outlines(plane: np.ndarray, region: tuple[slice, slice], size: tuple[int, int],
                    inks: Mapping[int, int], out: np.ndarray) -> None:
    """Paint the outline of each class of a label plane, resized to `size` (width, height), into
    `out` (palette indices; `inks` maps label codes to theirs). `region` (rows, columns) holds
    every label of the plane: only it is searched.

    Enlarged, a class is where the bilinear blend of its mask reaches half, as a contour line
    would follow it; shrunk, every display pixel that one of its voxels overlaps, so that
    one-voxel-thin structures (a subarachnoid streak) are not lost between display pixels. The
    outline is one pixel on either side of the boundary, like a 2 px contour line.
    """
    (rows, cols), (width, height) = plane.shape, size
    scale_y, scale_x = height / rows, width / cols
    enlarged = min(scale_x, scale_y) >= 1
    labels = np.ascontiguousarray(plane[region])
    for code in (int(c) for c in np.unique(labels)):
        if code not in inks:
            continue
        voxels = labels == code
        box = bounding_box(voxels, 0)
        first_row, first_col = region[0].start + box[0].start, region[1].start + box[1].start
        last_row, last_col = region[0].start + box[0].stop, region[1].start + box[1].stop
        # The display pixels over the class's voxels plus room for the outline's outer side.
        top, bottom = max(int(first_row * scale_y) - 2, 0), min(
            int(np.ceil(last_row * scale_y)) + 2, height)
        left, right = max(int(first_col * scale_x) - 2, 0), min(
            int(np.ceil(last_col * scale_x)) + 2, width)
        mask = np.zeros(plane.shape, dtype=np.uint8)
        mask[region][voxels] = 255
        resized = np.asarray(Image.fromarray(mask).resize(
            (right - left, bottom - top),
            Image.Resampling.BILINEAR if enlarged else Image.Resampling.BOX,
            box=(left / scale_x, top / scale_y, right / scale_x, bottom / scale_y)))
        out[top:bottom, left:right][_ring(resized >= 128 if enlarged else resized > 0)] = \
            inks[code]


def _ring(mask: np.ndarray) -> np.ndarray:
    """The pixels within one pixel (3 x 3) of both the mask and its outside: its dilation less its
    erosion, where beyond the array counts as outside (so outlines that reach the edge close).

    Separable boolean shifts: scipy's binary morphology took 5 ms on a 426 x 352 panel.
    """
    padded = np.pad(mask, 1)
    rows_any = padded[:-2] | padded[1:-1] | padded[2:]
    rows_all = padded[:-2] & padded[1:-1] & padded[2:]
    dilated = rows_any[:, :-2] | rows_any[:, 1:-1] | rows_any[:, 2:]
    eroded = rows_all[:, :-2] & rows_all[:, 1:-1] & rows_all[:, 2:]
    return dilated & ~eroded


@lru_cache(maxsize=8)
def _font(size_px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_FONT_FILE), size_px)


def _fitted_font(draw: ImageDraw.ImageDraw, text: str, size_px: int,
                 width: int) -> ImageFont.FreeTypeFont:
    """The font at `size_px`, smaller if `text` would not fit in `width` (long subtype lists)."""
    length = draw.textlength(text, font=_font(size_px))
    if length > width:
        size_px = max(int(size_px * width / length), _TITLE_MIN_PX)
    return _font(size_px)


def _title(case_id: str, lesion: np.ndarray, voxel_volume_mm3: float,
           class_names: Mapping[int, str]) -> tuple[str, list[int]]:
    """(the picture's title, the label codes present) from the labelled voxels `lesion`."""
    if lesion.size == 0:
        return f"{case_id}: no hemorrhage predicted", []
    volumes = label_volumes_ml(lesion, voxel_volume_mm3, class_names)
    title = f"{case_id}: hemorrhage {volumes['total']:.1f} mL"
    present = [c for c in class_names if volumes[class_names[c]] > 0]
    if len(class_names) > 1:
        title += " (" + ", ".join(f"{class_names[c]} {volumes[class_names[c]]:.1f}"
                                  for c in present) + ")"
    return title, present


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
    # Views of the whole volume (axes swapped or mirrored): only what is shown gets copied.
    hu, orientation = reorient_to_ras(np.asarray(image.array), image.affine)
    codes, _ = reorient_to_ras(np.asarray(labels), image.affine)
    # Spacing along the RAS-ordered axes: native axis i went to RAS axis orientation[i, 0].
    spacing = np.empty(3)
    spacing[orientation[:, 0].astype(int)] = image.spacing
    slices = _pick_slices(codes, hu, SLICES_SHOWN)
    labelled = bounding_box(codes, 0)
    lesion = codes[labelled] if labelled is not None else codes[:0, :0, :0]
    title, present = _title(case_id, lesion[lesion > 0], image.voxel_volume_mm3, class_names)
    crop_x, crop_y = _in_plane_head_box(hu, spacing)
    hu, codes = hu[crop_x, crop_y], codes[crop_x, crop_y]
    region = _labelled_region(labelled, crop_x, crop_y)
    # The slice number a viewer of the original file shows (1-based, in the file's own order).
    native_axis = int(np.flatnonzero(orientation[:, 0] == 2)[0])
    flipped = orientation[native_axis, 1] < 0
    depth = codes.shape[2]

    inks = ({1: _ink(BINARY_COLOUR)} if len(class_names) == 1 else
            {c: _ink(SUBTYPE_COLOURS.get(c, "white")) for c in class_names})
    fov_x, fov_y = codes.shape[0] * spacing[0], codes.shape[1] * spacing[1]
    mm_to_px = min(_DISPLAY_BOX[0] / fov_x, _DISPLAY_BOX[1] / fov_y)
    size = (max(round(fov_x * mm_to_px), 1), max(round(fov_y * mm_to_px), 1))
    legend = len(class_names) > 1 and bool(present)
    top = _TITLE_BAND + _PANEL_HEADER
    shape = (top + size[1] + (_LEGEND_BAND if legend else _BOTTOM_MARGIN),
             _SLOT_WIDTH * len(slices))
    greys = np.zeros(shape, dtype=np.uint8)
    outlines = np.zeros(shape, dtype=np.uint8)  # palette indices; 0 where the grey shows
    lefts = [i * _SLOT_WIDTH + (_SLOT_WIDTH - size[0]) // 2 for i in range(len(slices))]
    for left, z in zip(lefts, slices, strict=True):
        grey = Image.fromarray(_brain_window(_radiological(hu[:, :, z])))
        greys[top:top + size[1], left:left + size[0]] = grey.resize(size,
                                                                    Image.Resampling.BILINEAR)
        if region is not None:
            _paint_outlines(_radiological(codes[:, :, z]), region, size, inks,
                            outlines[top:top + size[1], left:left + size[0]])

    # Text is drawn on the greys alone, where anti-aliasing blends palette greys.
    picture = Image.fromarray(greys)
    draw = ImageDraw.Draw(picture)
    heading = f"{title}   [brain window 40/80, radiological view]"
    draw.text((shape[1] / 2, _TITLE_BAND / 2), heading, fill=_WHITE, anchor="mm",
              font=_fitted_font(draw, heading, _TITLE_PX, shape[1] - 8))
    middle = top + size[1] / 2
    for i, (left, z) in enumerate(zip(lefts, slices, strict=True)):
        native_z = depth - 1 - z if flipped else z
        draw.text(((i + 0.5) * _SLOT_WIDTH, _TITLE_BAND + _PANEL_HEADER / 2),
                  f"slice {native_z + 1}/{depth}", fill=_WHITE, anchor="mm",
                  font=_font(_PANEL_TITLE_PX))
        # A black rim keeps the side markers legible where the head reaches the panel's edge.
        for text, x, anchor in (("R", left + 4, "lm"), ("L", left + size[0] - 4, "rm")):
            draw.text((x, middle), text, fill=_WHITE, anchor=anchor, font=_font(_SIDE_PX),
                      stroke_width=2, stroke_fill=0)
    if legend:
        _draw_legend(draw, outlines, [(class_names[c], inks[c]) for c in present],
                     shape[1] / 2, shape[0] - _LEGEND_BAND / 2)
    picture = Image.fromarray(np.where(outlines > 0, outlines, np.asarray(picture)))
    picture.putpalette(_PALETTE)
    return save_png(picture, path)


def _draw_legend(draw: ImageDraw.ImageDraw, outlines: np.ndarray,
                 entries: list[tuple[str, int]], centre_x: float, centre_y: float) -> None:
    """One row of (coloured stroke, class name) entries centred on (centre_x, centre_y): names
    drawn as text, strokes painted into `outlines` (palette indices)."""
    font, gap, indent = _font(_LEGEND_PX), 28, _LEGEND_LINE[0] + 8
    widths = [indent + draw.textlength(name, font=font) for name, _ in entries]
    x = round(centre_x - (sum(widths) + gap * (len(entries) - 1)) / 2)
    stroke_top = round(centre_y - _LEGEND_LINE[1] / 2)
    for (name, ink), width in zip(entries, widths, strict=True):
        outlines[stroke_top:stroke_top + _LEGEND_LINE[1], x:x + _LEGEND_LINE[0]] = ink
        draw.text((x + indent, centre_y), name, fill=_WHITE, anchor="lm", font=font)
        x += round(width + gap)
