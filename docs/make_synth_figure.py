"""Draw docs/synthetic_case.png: synthetic axial slices in the brain window beside their labels.

Run from the repository root after changing ichseg.data.synth, to keep the figure current:

    python docs/make_synth_figure.py [--seed S] [--view CASE SLICE]... [--out PNG]

The default views are slices of seed 0 (default geometry, 512 x 512 x 32 at 0.45 x 0.45 x
5 mm) that between them show all five subtypes, a scalp haematoma (outside the skull: not
labelled), the skull base with its sinuses and streaks, and the neck below it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ichseg.data.synth import LABELS, TISSUES, make_case  # noqa: E402

SUBTYPE_COLOURS = {"EDH": "#e6194b", "IPH": "#f58231", "IVH": "#4363d8", "SAH": "#3cb44b",
                   "SDH": "#f032e6"}
BRAIN_WINDOW = (0.0, 80.0)  # level 40, width 80
DEFAULT_VIEWS = ((4, 23), (0, 24), (4, 8), (4, 1))
HAEMATOMA_COLOUR = "#ffe119"


def _display(slice_xy: np.ndarray) -> np.ndarray:
    """(X, Y) in RAS voxel order -> radiological view: anterior up, patient's right on the left."""
    return np.flipud(slice_xy.T)[:, ::-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--view", type=int, nargs=2, action="append", metavar=("CASE", "SLICE"))
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("synthetic_case.png"))
    args = parser.parse_args()
    views = args.view or DEFAULT_VIEWS

    colours = ListedColormap(["black"] + list(SUBTYPE_COLOURS.values()))
    fig, axes = plt.subplots(len(views), 2, figsize=(10, 5 * len(views)), squeeze=False,
                             constrained_layout=True)
    cases = {}
    for row, (index, z) in zip(axes, views, strict=True):
        case = cases.setdefault(index, make_case(args.seed, index=index))
        hu, label = _display(case.hu[:, :, z]), _display(case.label[:, :, z])
        sx, sy, sz = case.spacing
        extent = (0, hu.shape[1] * sx, 0, hu.shape[0] * sy)
        for ax in row:
            ax.imshow(hu, cmap="gray", vmin=BRAIN_WINDOW[0], vmax=BRAIN_WINDOW[1], extent=extent)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_title(f"case {index}, slice {z}: brain window 40/80 HU")
        row[1].imshow(np.ma.masked_equal(label, 0), cmap=colours, vmin=0, vmax=5,
                      interpolation="nearest", alpha=0.6, extent=extent)
        row[1].set_title("label by subtype")
        present = set(np.unique(label).tolist())
        handles = [Patch(color=colour, label=name) for name, colour in SUBTYPE_COLOURS.items()
                   if LABELS[name] in present]
        haematoma = _display(case.tissues[:, :, z]) == TISSUES["scalp_haematoma"]
        if haematoma.any():  # blood outside the skull: drawn, never labelled
            row[1].contour(haematoma, [0.5], colors=HAEMATOMA_COLOUR, linewidths=1.0,
                           extent=extent, origin="upper")
            handles.append(Patch(color=HAEMATOMA_COLOUR, label="scalp haematoma (background)"))
        if handles:
            row[1].legend(handles=handles, loc="lower right", fontsize=9)
        row[0].text(6, extent[3] - 14, "R", color="yellow", fontsize=12)
    fig.suptitle(f"ichseg synth, seed {args.seed}: {case.hu.shape[0]} x {case.hu.shape[1]} x "
                 f"{case.hu.shape[2]} voxels of {sx:g} x {sy:g} x {sz:g} mm")
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
