"""Matplotlib figures without pyplot: no global state, safe to draw from a training loop.

A `Figure` built directly (with the Agg canvas) is freed as soon as it goes out of scope, where
pyplot would keep every figure alive until closed. Files are replaced atomically, so a viewer
refreshing `progress.png` mid-epoch never reads half a PNG. Pictures composed directly as pixels
(the per-case overlay, drawn once per predicted scan) are written the same way by `save_png`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ichseg.fileio import atomic_path

# zlib level 1: a predicted overlay took 0.46 s to draw and write against 0.53 s at the default
# level, for a file of the same size (333 kB).
_PNG_COMPRESS_LEVEL = 1


def new_figure(width_in: float, height_in: float, facecolor: str = "white") -> Figure:
    """A figure with fixed margins: callers place their axes with `subplots_adjust` (matplotlib's
    constrained layout would double the drawing time, which the trainer pays every epoch)."""
    fig = Figure(figsize=(width_in, height_in), facecolor=facecolor)
    FigureCanvasAgg(fig)
    return fig


def _replace_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write` on a temporary file in `path`'s folder, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not fsynced: a picture lost to a power cut is drawn again at the next epoch or predict.
    with atomic_path(path, durable=False) as tmp:
        write(tmp)
    return path


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write `fig` as PNG to `path` through a temporary file in the same folder, then rename."""
    return _replace_atomically(path, lambda tmp: fig.savefig(
        tmp, format="png", dpi=dpi, facecolor=fig.get_facecolor(),
        pil_kwargs={"compress_level": _PNG_COMPRESS_LEVEL}))


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a Pillow image as PNG to `path`, atomically like `save_figure`.

    zlib's run-length matching suits pictures of flat areas (an overlay's black background): the
    same size as its default matching (270 kB), in 8.5-9.7 ms instead of 14-15 ms.
    """
    return _replace_atomically(path, lambda tmp: image.save(
        tmp, format="png", compress_level=_PNG_COMPRESS_LEVEL, compress_type=zlib.Z_RLE))
