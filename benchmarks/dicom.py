"""What the DICOM path costs per series: headers, dcm2niix, the regular grid of a tilted series.

    python benchmarks/dicom.py [--repeats 5]

Series of 512 x 512 slices (pydicom's CT_small.dcm as the template, a synthetic head's HU):
32 slices of 5 mm and 160 of 1 mm, stored uncompressed, as RLE and as JPEG lossless (process 14,
needs imagecodecs to write), and a 32-slice series with a 15 degree gantry tilt. Rows, medians of
`--repeats`:
- headers: `find_series` + `skip_reason` (every header read with pydicom, no pixels);
- read_series: the conversion by dcm2niix and reading its NIfTI (with the regular grid where
  the series is tilted or unevenly spaced);
- pydicom pixels: every file read with pydicom and its pixels stacked, what the reader before
  dcm2niix did (uncompressed only: pydicom has no lossless JPEG decoder without plug-ins).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
from data import median_seconds  # benchmarks/ is on the path when this runs as a script
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLosslessSV1, RLELossless, generate_uid

from ichseg.data.dicom import find_series, read_series, skip_reason
from ichseg.data.synth import make_case

SIZE = 512


def write(folder: Path, hu: np.ndarray, step: float, syntax: str | None = None,
          tilt: float = 0.0) -> None:
    folder.mkdir(parents=True)
    uid = generate_uid()
    angle = np.deg2rad(tilt)
    for k in range(hu.shape[2]):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.Rows = ds.Columns = SIZE
        ds.PixelSpacing = [0.45, 0.45]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, float(np.cos(angle)),
                                      float(-np.sin(angle))]
        ds.ImagePositionPatient = [-115.0, -115.0, step * k]
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, generate_uid()
        ds.PixelRepresentation, ds.RescaleIntercept = 0, -1024
        stored = np.ascontiguousarray((hu[:, :, k].T + 1024).clip(0).astype(np.uint16))
        ds.PixelData = stored.tobytes()
        if syntax == RLELossless:
            ds.compress(RLELossless, encoding_plugin="pydicom")
        elif syntax == JPEGLosslessSV1:
            import imagecodecs

            ds.PixelData = encapsulate([imagecodecs.jpeg8_encode(
                stored, lossless=True, predictor=1, bitspersample=16)])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(folder / f"IM{k:04d}", enforce_file_format=True)


def pydicom_pixels(folder: Path) -> np.ndarray:
    return np.stack([pydicom.dcmread(p).pixel_array for p in sorted(folder.iterdir())], -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    thick = make_case(0, (SIZE, SIZE, 32), (0.45, 0.45, 5.0)).hu
    thin = make_case(0, (SIZE, SIZE, 160), (0.45, 0.45, 1.0)).hu
    series = [("32 x 5 mm, uncompressed", thick, 5.0, None, 0.0),
              ("32 x 5 mm, RLE", thick, 5.0, RLELossless, 0.0),
              ("32 x 5 mm, JPEG lossless SV1", thick, 5.0, JPEGLosslessSV1, 0.0),
              ("32 x 5 mm, 15 degree tilt", thick, 5.0, None, 15.0),
              ("160 x 1 mm, uncompressed", thin, 1.0, None, 0.0)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, hu, step, syntax, tilt) in enumerate(series):
            folder = Path(tmp) / str(index)
            write(folder, hu, step, syntax, tilt)
            (found,) = find_series(folder)
            headers = median_seconds(lambda f=folder: [skip_reason(s) for s in find_series(f)],
                                     args.repeats)
            convert = median_seconds(lambda s=found: read_series(s), args.repeats)
            plain = (median_seconds(lambda f=folder: pydicom_pixels(f), args.repeats)
                     if syntax is None and not tilt else None)
            rows.append((name, headers, convert, plain))
    print(f"medians of {args.repeats}; seconds per series")
    print("| series | headers | read_series (dcm2niix) | total | pydicom pixels |")
    print("|---|---|---|---|---|")
    for name, headers, convert, plain in rows:
        reference = "" if plain is None else f"{plain:.3f}"
        print(f"| {name} | {headers:.3f} | {convert:.3f} | {headers + convert:.3f} | "
              f"{reference} |")


if __name__ == "__main__":
    main()
