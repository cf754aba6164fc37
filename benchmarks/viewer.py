"""Viewer pages of big scans: the time predict spends writing one, its size, and how long a
headless Chromium (software WebGL, SwiftShader) takes to open it until the page says it is ready.

    python benchmarks/viewer.py [--shape 512 512 300] [--spacing 0.45 0.45 0.6] [--no-browser]

The scan is a synthetic head CT (data/synth, with its blur and noise, so it compresses like a
scan rather than like a drawing) and its drawn hemorrhages stand in for the prediction, with an
uncertainty map. Opening is timed from navigation to the page's `data-state="ready"`: the bundle
parsed, base64 decoded, gunzipped, the outline computed, the volumes uploaded and drawn. The
browser is driven by tests/browser.py (the DevTools protocol over a pipe).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ichseg.data.io import Volume
from ichseg.data.synth.case import make_case
from ichseg.fileio import format_bytes
from ichseg.viz.report import VIEWER_DIR
from ichseg.viz.viewer import write_viewer

SUBTYPES = {1: "EDH", 2: "IPH", 3: "IVH", 4: "SAH", 5: "SDH"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.45, 0.45, 0.6])
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()

    start = time.perf_counter()
    case = make_case(args.seed, shape=args.shape, spacing=args.spacing)
    made = time.perf_counter() - start
    volume = Volume(case.hu.astype(np.float32), case.affine)
    uncertainty = np.zeros(case.hu.shape, dtype=np.float32)
    uncertainty[case.label > 0] = 0.2
    rows = [("scan", "x".join(map(str, args.shape)) + f" voxels, {args.spacing} mm "
             f"(drawn in {made:.1f} s)")]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        row = {"case": "big", "hemorrhage_ml": float((case.label > 0).sum()) * 1e-3}
        start = time.perf_counter()
        page = write_viewer(out, "big", volume, case.label, row, SUBTYPES, uncertainty)
        rows.append(("write_viewer", f"{time.perf_counter() - start:.2f} s"))
        rows.append(("page size", format_bytes(page.stat().st_size)))
        rows.append(("raw int16 scan", format_bytes(case.hu.size * 2)))
        if not args.no_browser:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
            from browser import BROWSER, Chromium, file_url

            if BROWSER is None:
                rows.append(("open in Chromium", "no chromium binary"))
            else:
                with Chromium(timeout_s=600) as browser:
                    start = time.perf_counter()
                    browser.open(file_url(out / VIEWER_DIR / "big.html"))
                    state = browser.wait_for(
                        "document.body && document.body.getAttribute('data-state')", 600)
                    rows.append((f"open in Chromium ({state})",
                                 f"{time.perf_counter() - start:.2f} s"))
                    steps = browser.evaluate("window.ichsegViewer.timings")
                    rows.append(("  its steps (ms from navigation)",
                                 ", ".join(f"{k} {v}" for k, v in steps.items())))
                    start = time.perf_counter()
                    browser.evaluate("window.ichsegViewer.setSlice(window.ichsegViewer.slice() + 1)")
                    rows.append(("next slice", f"{(time.perf_counter() - start) * 1000:.0f} ms"))
                    problems = browser.problems()
                    if problems:
                        rows.append(("console", "; ".join(problems)[:200]))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
