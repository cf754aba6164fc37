"""PRED/viewer/<case>.html: one predicted case to scroll through in the browser, offline.

Each page carries its own scan and label map (and uncertainty map, when predict wrote one) as
gzipped NIfTI in base64 inside `<script type="application/octet-stream">` elements, so it opens
by a double click from `file://`, where a browser refuses to fetch the files beside a page. The
viewer is NiiVue (BSD-2-Clause), its built bundle shipped inside this package
(`vendor/niivue`, fetched from the npm registry by scripts/fetch_niivue.sh) and copied once per
prediction folder as `PRED/viewer/niivue.umd.js`: a classic script, which a page opened from
`file://` may load from its own folder, where ES modules and fetches are refused. Nothing is
fetched from the network.

The scan is embedded as int16 HU (CT's stored values are integers; a float copy would be twice
the bytes), gzipped at level 1: a 512 x 512 x 300 series takes about 4 s to compress against
20 s at the default level, for a file 3 % larger. The uncertainty map is quantised to uint8
(scl_slope holds the scale). The page's own script is `viewer.js`, its style `viewer.css`; the
outline it draws is each class's surface (voxels touching another value along a voxel axis), the
same in every plane, so on thick slices it widens where a lesion grows or shrinks between slices.

Text from outside (the case id is a file or folder name) reaches the page only escaped: HTML
escaping in markup, and JSON whose `<`, `>` and `&` are written as \\u escapes, so no name can
close the script element holding it. The embedded NIfTI headers are built here, not copied from
the input, so no header or DICOM text travels with them.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ichseg.data.io import Volume
from ichseg.errors import UsageError
from ichseg.fileio import atomic_open, atomic_path
from ichseg.viz.overlay import BINARY_COLOUR, SUBTYPE_COLOURS
from ichseg.viz.report import VIEWER_DIR, flags_html, format_number, number_columns

NIIVUE_BUNDLE = "niivue.umd.js"
VENDOR = Path(__file__).resolve().parent / "vendor" / "niivue"
# Copied beside the bundle: the licence travels with the code it covers.
_VENDOR_FILES = {NIIVUE_BUNDLE: NIIVUE_BUNDLE, "LICENSE": "niivue-LICENSE.txt",
                 "THIRD_PARTY_LICENSES.txt": "niivue-THIRD_PARTY_LICENSES.txt"}
_ASSETS = Path(__file__).resolve().parent
# (level, width) in HU, docs/DOMAIN.md; the first is the page's default.
WINDOW_PRESETS = {"brain": (40, 80), "subdural": (80, 200), "bone": (600, 2800)}
_GZIP_LEVEL = 1
_HU_RANGE = (np.iinfo(np.int16).min, np.iinfo(np.int16).max)
_UNCERTAINTY_LEVELS = 254  # uint8 steps between 0 and the map's largest possible value, 1


def _nifti_gz(array: np.ndarray, affine: np.ndarray, slope: float | None = None) -> bytes:
    """Gzipped NIfTI-1 bytes of `array` on `affine` (sform and qform codes 1, as DICOM converters
    write them); `slope` stores real values = stored x slope."""
    image = nib.Nifti1Image(array, np.asarray(affine, dtype=np.float64))
    image.set_sform(image.affine, code=1)
    image.set_qform(image.affine, code=1)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    return gzip.compress(image.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)


def _script_json(value: Any) -> str:
    """JSON that stays inside its <script> element whatever the strings in it hold."""
    text = json.dumps(value, ensure_ascii=False)
    for character, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                              ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(character, escape)
    return text


def _classes(class_names: Mapping[int, str], row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Code, name, colour (the overlays' colours) and volume of each class, for the legend."""
    binary = len(class_names) == 1
    classes = []
    for code, name in class_names.items():
        ml = row.get("hemorrhage_ml" if binary else f"{name}_ml")
        classes.append({"code": int(code), "name": str(name),
                        "colour": BINARY_COLOUR if binary else SUBTYPE_COLOURS.get(int(code), "#ffffff"),
                        "ml": None if ml is None or ml == "" else float(ml)})
    return classes


def _label_lut(classes: list[dict[str, Any]]) -> dict[str, list]:
    """NiiVue's label colour map (R, G, B, A, I, labels per code; background transparent), for
    the page and the notebook widget alike."""
    top = max((c["code"] for c in classes), default=0)
    lut: dict[str, list] = {"R": [0] * (top + 1), "G": [0] * (top + 1), "B": [0] * (top + 1),
                            "A": [0] * (top + 1), "I": list(range(top + 1)),
                            "labels": ["background", *(f"code {c}" for c in range(1, top + 1))]}
    for item in classes:
        code, colour = item["code"], item["colour"]
        for channel, start in (("R", 1), ("G", 3), ("B", 5)):
            lut[channel][code] = int(colour[start:start + 2], 16)
        lut["A"][code], lut["labels"][code] = 255, item["name"]
    return lut


def _figures_html(row: Mapping[str, Any], class_names: Mapping[int, str]) -> str:
    """The case's figures and flags, as PRED/index.html shows them."""
    lines = [f"<tr><th>{html.escape(title)}</th><td>{format_number(row.get(key), digits)[1]}</td></tr>"
             for key, title, digits in number_columns(class_names)]
    for title, value in (("confidence from", html.escape(str(row.get("confidence_basis") or ""))),
                         ("postprocessing", html.escape(str(row.get("postprocessing") or ""))),
                         ("flags", flags_html(row))):
        if value:
            lines.append(f"<tr><th>{title}</th><td>{value}</td></tr>")
    return f'<table class="figures">{"".join(lines)}</table>'


def _legend_html(classes: list[dict[str, Any]]) -> str:
    items = []
    for item in classes:
        data, shown = format_number(item["ml"], 2)
        volume = f" <span class=\"ml\">{shown} mL</span>" if data else ""
        items.append(f'<li data-code="{item["code"]}"><span class="swatch" '
                     f'style="background:{html.escape(item["colour"], quote=True)}"></span>'
                     f"{html.escape(item['name'])}{volume}</li>")
    return f'<ul class="legend">{"".join(items)}</ul>'


def _controls_html(with_uncertainty: bool) -> str:
    windows = "".join(f'<button type="button" data-window="{name}">{name}</button>'
                      for name in WINDOW_PRESETS)
    views = "".join(f'<label><input type="radio" name="view" value="{value}"{checked}> {name}'
                    f"</label>" for value, name, checked in (
                        ("axial", "axial", " checked"), ("coronal", "coronal", ""),
                        ("sagittal", "sagittal", ""), ("multiplanar", "multiplanar", "")))
    uncertainty = ("" if not with_uncertainty else
                   '<fieldset><legend>uncertainty</legend><label><input type="checkbox" '
                   'id="uncertainty-shown"> show</label> <input type="range" '
                   'id="uncertainty-opacity" min="0" max="100" value="70" '
                   'aria-label="uncertainty opacity"></fieldset>')
    return (f'<fieldset><legend>view</legend>{views}</fieldset>'
            '<fieldset><legend>slice</legend><input type="range" id="slice" min="0" max="0" '
            'value="0" aria-label="slice"> <span id="slice-index">&ndash;</span></fieldset>'
            f'<fieldset><legend>window</legend><div class="presets">{windows}</div>'
            '<label>level <input type="number" id="level" step="1"></label> '
            '<label>width <input type="number" id="width" min="1" step="1"></label></fieldset>'
            '<fieldset><legend>labels</legend><label><input type="checkbox" id="labels-shown" '
            'checked> show</label> <label><input type="radio" name="style" value="outline" '
            'checked> outline</label> <label><input type="radio" name="style" value="fill"> '
            'fill</label><input type="range" id="labels-opacity" min="0" max="100" value="100" '
            'aria-label="label opacity"></fieldset>'
            f"{uncertainty}")


def _embedded(element_id: str, data: bytes) -> bytes:
    """A non-executed script element holding `data` in base64 (its alphabet has no `<`)."""
    return (f'<script type="application/octet-stream" id="{element_id}">'.encode()
            + base64.b64encode(data) + b"</script>\n")


def _asset(name: str) -> str:
    return (_ASSETS / name).read_text(encoding="utf-8")


def install_niivue(out_dir: str | Path) -> Path:
    """Copy NiiVue's bundle and licences into OUT/viewer/ unless the same files are there."""
    folder = Path(out_dir) / VIEWER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for source, target in _VENDOR_FILES.items():
        origin, copy = VENDOR / source, folder / target
        if copy.is_file() and copy.read_bytes() == origin.read_bytes():
            continue
        with atomic_path(copy, durable=False) as tmp:
            shutil.copyfile(origin, tmp)
    return folder / NIIVUE_BUNDLE


def niivue_version() -> str:
    """The vendored release, e.g. '0.69.0' (vendor/niivue/VERSION's first line)."""
    return (VENDOR / "VERSION").read_text(encoding="utf-8").split()[1]


def write_viewer(out_dir: str | Path, case_id: str, volume: Volume, labels: np.ndarray,
                 row: Mapping[str, Any], class_names: Mapping[int, str],
                 uncertainty: np.ndarray | None = None) -> Path:
    """Write (atomically) OUT/viewer/<case>.html for a predicted case and make sure NiiVue's
    bundle is beside it; `row` is its volumes.csv row (figures shown beside the images)."""
    out_dir = Path(out_dir)
    install_niivue(out_dir)
    hu = np.clip(np.rint(volume.array), *_HU_RANGE).astype(np.int16)
    images = [("scan", _nifti_gz(hu, volume.affine)),
              ("labels", _nifti_gz(np.asarray(labels, dtype=np.uint8), volume.affine))]
    if uncertainty is not None:
        steps = np.rint(np.clip(uncertainty, 0.0, 1.0) * _UNCERTAINTY_LEVELS).astype(np.uint8)
        images.append(("uncertainty", _nifti_gz(steps, volume.affine, 1.0 / _UNCERTAINTY_LEVELS)))
    classes = _classes(class_names, row)
    settings = {"case": case_id, "classes": classes, "lut": _label_lut(classes),
                "windows": WINDOW_PRESETS, "uncertainty": uncertainty is not None}
    title = html.escape(f"{case_id} – ichseg viewer")
    head = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{_asset('viewer.css')}</style></head><body>"
            f'<header><a href="../index.html">&larr; all cases</a>'
            f'<h1>{html.escape(case_id)}</h1><span id="status">loading&hellip;</span></header>'
            '<main><div id="view"><canvas id="gl"></canvas></div><aside>'
            f"{_figures_html(row, class_names)}{_legend_html(classes)}"
            f'<div id="readout" aria-live="polite">&nbsp;</div>{_controls_html(uncertainty is not None)}'
            '<p class="help">Wheel or arrow keys: next slice. Click: move the crosshair. '
            "Right-drag: window on the dragged region.</p>"
            f'<p class="credit">Viewer: NiiVue {html.escape(niivue_version())} '
            '(<a href="niivue-LICENSE.txt">BSD-2-Clause</a>).</p></aside></main>\n'
            f'<script type="application/json" id="case-data">{_script_json(settings)}</script>\n')
    path = out_dir / VIEWER_DIR / f"{case_id}.html"
    with atomic_open(path, "wb", durable=False) as handle:
        handle.write(head.encode("utf-8"))
        for element_id, data in images:
            handle.write(_embedded(element_id, data))
        handle.write(f'<script src="{NIIVUE_BUNDLE}"></script>\n'
                     f"<script>{_asset('viewer.js')}</script></body></html>\n".encode())
    return path


def page_contents(page: str | Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(the page's settings, {"scan"/"labels"/"uncertainty": gzipped NIfTI bytes}) of a viewer
    page, as it carries them."""
    text = Path(page).read_bytes()
    settings = re.search(rb'<script type="application/json" id="case-data">([^<]*)</script>', text)
    if settings is None:
        raise UsageError(f"{page} is not an ichseg viewer page")
    images = {match.group(1).decode(): base64.b64decode(match.group(2)) for match in re.finditer(
        rb'<script type="application/octet-stream" id="([a-z]+)">([^<]*)</script>', text)}
    return json.loads(settings.group(1)), images


def notebook_viewer(page: str | Path, height: int = 480) -> Any:
    """An ipyniivue widget (Jupyter, Colab) of the case a viewer page carries: the scan in the
    brain window, the label map in the classes' colours, the uncertainty map hidden. Needs
    `pip install ichseg[notebook]`; raises ImportError without it."""
    from ipyniivue import NiiVue, SliceType, Volume

    settings, images = page_contents(page)
    level, width = WINDOW_PRESETS["brain"]
    viewer = NiiVue(height=height, slice_type=SliceType.MULTIPLANAR, is_colorbar=False,
                    is_radiological_convention=True, back_color=(0, 0, 0, 1))
    scan = Volume(data=images["scan"], name="scan.nii.gz", colormap="gray",
                  cal_min=level - width / 2, cal_max=level + width / 2)
    labels = Volume(data=images["labels"], name="labels.nii.gz", opacity=0.7)
    labels.set_colormap_label(settings["lut"])
    volumes = [scan, labels]
    if "uncertainty" in images:
        volumes.append(Volume(data=images["uncertainty"], name="uncertainty.nii.gz",
                              colormap="warm", opacity=0.0, cal_min=0.05, cal_max=0.5))
    viewer.load_volumes(volumes)
    return viewer
