"""Draw docs/synthetic_case.png: a synthetic axial slice in the brain window beside its labels.

Run from the repository root after changing ichseg.data.synth, to keep the figure current:

    python docs/make_synth_figure.py [--seed S] [--case K] [--out docs/synthetic_case.png]
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

from ichseg.data.synth import LABELS, make_case  # noqa: E402

SUBTYPE_COLOURS = {"EDH": "#e6194b", "IPH": "#f58231", "IVH": "#4363d8", "SAH": "#3cb44b",
                   "SDH": "#f032e6"}
BRAIN_WINDOW = (0.0, 80.0)  # level 40, width 80
BONE_WINDOW = (-800.0, 2000.0)  # level 600, width 2800


def _display(slice_xy: np.ndarray) -> np.ndarray:
    """(X, Y) in RAS voxel order -> rows anterior-to-posterior, patient's right on the left."""
    return np.flipud(slice_xy.T)[:, ::-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("synthetic_case.png"))
    args = parser.parse_args()

    case = make_case(args.seed, index=args.case)
    # The slice holding the most blood, so every subtype drawn is likely to show.
    z = int(np.argmax((case.label > 0).sum(axis=(0, 1))))
    hu = _display(case.hu[:, :, z].astype(np.float32))
    label = _display(case.label[:, :, z])
    sx, sy, sz = case.spacing
    extent = (0, hu.shape[1] * sx, 0, hu.shape[0] * sy)

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.6), constrained_layout=True)
    axes[0].imshow(hu, cmap="gray", vmin=BRAIN_WINDOW[0], vmax=BRAIN_WINDOW[1], extent=extent)
    axes[0].set_title(f"brain window 40/80 HU, slice {z} ({sz:g} mm)")
    axes[1].imshow(hu, cmap="gray", vmin=BONE_WINDOW[0], vmax=BONE_WINDOW[1], extent=extent)
    axes[1].set_title("bone window 600/2800 HU")
    colours = ListedColormap(["none"] + list(SUBTYPE_COLOURS.values()))
    axes[2].imshow(hu, cmap="gray", vmin=BRAIN_WINDOW[0], vmax=BRAIN_WINDOW[1], extent=extent)
    axes[2].imshow(np.ma.masked_equal(label, 0), cmap=colours, vmin=0, vmax=5,
                   interpolation="nearest", alpha=0.75, extent=extent)
    axes[2].set_title("hemorrhage label by subtype")
    present = set(np.unique(case.label).tolist())
    axes[2].legend(handles=[Patch(color=SUBTYPE_COLOURS[name],
                                  label=name + ("" if LABELS[name] in present else " (none)"))
                            for name in SUBTYPE_COLOURS], loc="lower right", fontsize=9)
    for ax in axes:
        ax.set_xlabel("mm (patient's right on the left)")
        ax.set_ylabel("mm")
    fig.suptitle(f"ichseg synth: seed {args.seed}, case {args.case}, "
                 f"{case.hu.shape[0]}x{case.hu.shape[1]}x{case.hu.shape[2]} at "
                 f"{sx:g} x {sy:g} x {sz:g} mm")
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
