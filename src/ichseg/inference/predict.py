"""`ichseg predict`: segment scans with a trained model, back on each scan's own voxel grid.

For each input (a NIfTI file, a folder of them, or a folder holding DICOM series: each axial CT
series in it, see `list_inputs`) the scan goes through exactly the training
preprocessing (from the checkpoint's config: RAS reorientation, crop to the head, resampling, HU
windows), then MONAI's sliding-window inference with Gaussian blending, optionally averaged over
mirrored copies (test-time augmentation), then back to the native grid: the class probabilities
are interpolated linearly onto the input's voxels before the argmax, so outlines stay smooth on a
0.45 mm grid predicted at 1.8 mm, and the label map has exactly the input's shape and affine.

Outputs in OUT, each written as soon as its case is done (so a bad input later in the list leaves
the earlier cases complete): `<case>.nii.gz` (uint8 labels), `overlays/<case>.png`,
`viewer/<case>.html` (viz/viewer.py), `volumes.csv` and `index.html` (rewritten after every
case), and with `save_probabilities`
`probabilities/<case>.nii.gz` (the hemorrhage probability, float32). With
`inference.intracranial_only` (the default) what is predicted outside the scan's cranial cavity
(data/cavity.py: neck, face, scalp) is dropped, and volumes.csv says how much
(`outside_cavity_ml`); a scan where no skull is found keeps its prediction, with a warning. The
run's chosen postprocessing (postprocess.py) is then applied to the label map; volumes.csv also
carries ABC/2
(evaluation/abc2.py) and the confidence (confidence.py; `save_uncertainty` writes
`uncertainty/<case>.nii.gz`); `dicom_seg` writes `<case>.seg.dcm` for DICOM series (dicom_seg.py).
"""

from __future__ import annotations

import csv
import itertools
import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ichseg.data.cavity import find_cavity
from ichseg.data.ct import preprocess_case, restore_argmax, restore_to_native
from ichseg.data.dicom import DicomSeries, is_dicom_file, read_scan, read_series, study_series
from ichseg.data.io import (
    NNUNET_CHANNEL_SUFFIX,
    Volume,
    is_nifti_name,
    nifti_files,
    nifti_stem,
    write_nifti,
)
from ichseg.data.masks import label_volumes_ml
from ichseg.errors import UsageError
from ichseg.evaluation.abc2 import ABC2_COLUMNS, abc2_columns
from ichseg.fileio import atomic_open
from ichseg.inference import confidence as case_confidence
from ichseg.inference.predictor import Predictor
from ichseg.models.window import window_logits

log = logging.getLogger("ichseg.predict")

VOLUMES_CSV = "volumes.csv"
OVERLAYS = "overlays"
PROBABILITIES = "probabilities"
UNCERTAINTY = "uncertainty"
# A scan this thin along any axis is a 2D image (or a scout), not a head CT volume.
MIN_SLICES = 2


@torch.no_grad()
def class_probabilities(predictor: Predictor, channels: np.ndarray, tta: bool = False,
                        overlap: float | None = None,
                        on_pass: Callable[[torch.Tensor], None] | None = None) -> np.ndarray:
    """Softmax (K, x, y, z) on the network grid; with `tta`, the mean over the volume as it is
    and mirrored along each spatial axis in turn (each copy flipped back before averaging).
    An ensemble (`predictor.members`) averages its models' means: one model's mean per model
    first, so an ensemble of identical models gives exactly one model's probabilities.
    `on_pass` sees each pass's softmax (1, K, x, y, z), flipped back."""
    image = torch.from_numpy(np.ascontiguousarray(channels))[None].to(predictor.device)
    spatial = (2, 3, 4)
    mirrors: Sequence[tuple[int, ...]] = [()]
    if tta:
        mirrors = [(), *itertools.combinations(spatial, 1)]
    voted = None
    for member in predictor.members:
        total = None
        for axes in mirrors:
            flipped = torch.flip(image, axes) if axes else image
            logits = window_logits(member.model, flipped, member.cfg, overlap)
            probs = torch.softmax(logits.float(), dim=1)
            probs = torch.flip(probs, axes) if axes else probs
            if on_pass is not None:
                on_pass(probs)
            total = probs if total is None else total + probs
        mean = total / len(mirrors)
        voted = mean if voted is None else voted + mean
    return (voted / len(predictor.members))[0].cpu().numpy()


@dataclass
class Segmentation:
    """What `segment` makes of one scan, on the scan's own voxel grid."""

    labels: np.ndarray  # uint8 label map
    probability: np.ndarray | None  # float32 hemorrhage probability, when asked for
    # mL predicted outside the cranial cavity and dropped; None when not clipped (intracranial
    # only is off, or no skull was found).
    outside_cavity_ml: float | None = None


def segment(predictor: Predictor, volume: Volume, tta: bool = False, overlap: float | None = None,
            with_probability: bool = False,
            confidence: case_confidence.CaseConfidence | None = None,
            intracranial_only: bool | None = None) -> Segmentation:
    """A scan -> its label map (and hemorrhage probability, when asked), as predict writes it
    before postprocessing; the postprocessing choice segments its validation cases through here
    too. `confidence` is filled in from the passes (confidence.py). With `intracranial_only`
    (default: the model's `inference.intracranial_only`) voxels outside the cranial cavity are
    dropped (their probability set to 0); where no skull is found, a warning names the scan
    and the prediction is kept."""
    channels, _, info = preprocess_case(volume, None, predictor.cfg.data)
    probs = class_probabilities(predictor, channels, tta, overlap, confidence)
    if confidence is not None:
        confidence.measure(probs, info)
    labels = restore_argmax(probs, info)
    probability = (1.0 - restore_to_native(probs[:1], info, order=1)[0] if with_probability
                   else None)
    if intracranial_only is None:
        intracranial_only = predictor.cfg.inference.intracranial_only
    if not intracranial_only:
        return Segmentation(labels, probability)
    if not labels.any():  # nothing to drop: the cavity is not looked for
        return Segmentation(labels, probability, 0.0)
    cavity = find_cavity(volume.array, volume.affine)
    if cavity.mask is None:
        warnings.warn(f"cranial cavity: {volume.path}: {cavity.reason}; its prediction is kept "
                      f"whole, outside the skull too", UserWarning, stacklevel=2)
        return Segmentation(labels, probability)
    outside = ~cavity.mask
    dropped = int(np.count_nonzero(labels[outside]))
    labels[outside] = 0
    if probability is not None:
        probability[outside] = 0.0
    return Segmentation(labels, probability, dropped * volume.voxel_volume_mm3 / 1000.0)


def input_case_id(path: Path) -> str:
    """The case id of a predict input: a folder's name, a DICOM file's name without `.dcm`, or
    a NIfTI file's name without its extension and without nnU-Net's `_0000` channel suffix."""
    if path.is_dir():
        return path.resolve().name
    if not is_nifti_name(path.name):
        return path.name[:-len(".dcm")] if path.name.lower().endswith(".dcm") else path.name
    stem = nifti_stem(path.name)
    if stem.endswith(NNUNET_CHANNEL_SUFFIX) and len(stem) > len(NNUNET_CHANNEL_SUFFIX):
        stem = stem[: -len(NNUNET_CHANNEL_SUFFIX)]
    return stem


def _series_cases(folder: Path, series: list[DicomSeries]) -> list[tuple[str, DicomSeries]]:
    """A folder of one series names the case after the folder; of several, each
    `<folder>_s<SeriesNumber>` (`_2`, `_3`... after a number met twice)."""
    name = input_case_id(folder)
    if len(series) == 1:
        return [(name, series[0])]
    cases, seen = [], {}
    for item in series:
        case_id = f"{name}_s{'x' if item.number is None else item.number}"
        seen[case_id] = seen.get(case_id, 0) + 1
        cases.append((case_id if seen[case_id] == 1 else f"{case_id}_{seen[case_id]}", item))
    return cases


def list_inputs(paths: Iterable[str | Path] | str | Path,
                ) -> tuple[list[tuple[str, Path | DicomSeries]], list[str]]:
    """([(case id, NIfTI file or DICOM series)], notes) for predict: NIfTI files, folders of
    NIfTI files, and folders searched recursively for DICOM series (and DICOM files: an
    Enhanced CT object is a series), of which each axial CT volume is a case and every other
    object is skipped with a one-line note (`data.dicom`). Refuses anything else, and repeated
    case ids."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[tuple[str, Path | DicomSeries]] = []
    notes: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file() and is_nifti_name(path.name):
            found.append((input_case_id(path), path))
        elif path.is_dir() and (files := nifti_files(path)):
            found.extend((input_case_id(p), p) for p in files)
        elif not path.exists():
            raise UsageError(f"input {path} does not exist")
        elif path.is_dir() or is_dicom_file(path):
            series, skipped = study_series(path)
            if not series:
                why = f": {'; '.join(skipped)}" if skipped else ""
                raise UsageError(f"input {path} holds no NIfTI file and no axial CT volume "
                                 f"series{why}")
            found.extend(_series_cases(path, series))
            notes.extend(skipped)
        else:
            raise UsageError(f"input {path} is not a NIfTI file, a folder of NIfTI files, a "
                             f"DICOM file or a folder of DICOM series")
    seen: dict[str, Path | DicomSeries] = {}
    for case_id, source in found:
        if case_id in seen:
            raise UsageError(f"inputs {seen[case_id]} and {source} would both be written as "
                             f"case {case_id!r}; rename one")
        seen[case_id] = source
    if not found:
        raise UsageError("no input scans were given")
    return found, notes


def _read_input(source: Path | DicomSeries, max_voxels: int) -> Volume:
    if isinstance(source, DicomSeries):
        return read_series(source, max_voxels)
    path = source
    volume = read_scan(path, max_voxels)
    if min(volume.array.shape) < MIN_SLICES:
        raise UsageError(f"{path} is a 2D image (shape {volume.array.shape}); predict needs a 3D "
                         f"head CT with several slices")
    return volume


def _write_volumes_csv(path: Path, rows: list[dict[str, Any]], class_names: dict[int, str]) -> None:
    """Rewrite volumes.csv atomically: the cases done so far."""
    per_class = [f"{name}_ml" for name in class_names.values()] if len(class_names) > 1 else []
    columns = ["case", "voxel_volume_mm3", "hemorrhage_ml", *per_class, "empty",
               "outside_cavity_ml",
               *ABC2_COLUMNS, *case_confidence.COLUMNS, "postprocessing", "input", "dicom_seg"]
    with atomic_open(path, "w", durable=False, newline="") as handle:  # rewritten per case
        writer = csv.DictWriter(handle, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "empty": "yes" if row["empty"] else "no",
                             "unstable": {True: "yes", False: "no"}.get(row.get("unstable"))})


def predict_cases(run_or_checkpoint: str | Path | Sequence[str | Path],
                  inputs: Sequence[str | Path], out_dir: str | Path,
                  tta: bool | None = None, checkpoint: str | None = None,
                  overlap: float | None = None,
                  save_probabilities: bool | None = None, device: str = "auto",
                  quiet: bool = False, postprocess: bool | None = None,
                  save_uncertainty: bool | None = None,
                  dicom_seg: bool | None = None,
                  intracranial_only: bool | None = None,
                  viewer: bool | None = None) -> list[dict[str, Any]]:
    """Segment every input scan into `out_dir`; one result dict per case (also in volumes.csv,
    and in the browsable index.html).

    `checkpoint` picks a run folder's `best` or `last` model (default: the run's config.yaml
    `inference.checkpoint`); `tta`, `overlap`, `save_probabilities`, `save_uncertainty`,
    `postprocess` (apply the run's chosen postprocessing), `dicom_seg` (a DICOM SEG per DICOM
    series input), `intracranial_only` (drop what lies outside the cranial cavity) and `viewer`
    (a viewer page per case) default to the inference settings in the model's config. Several runs or
    checkpoints (or a folder of runs) predict as an ensemble; `models.json` lists the models
    that voted.
    """
    from ichseg.inference.ensemble import load_models, write_models_json
    from ichseg.inference.postprocess import for_predictor
    from ichseg.viz.overlay import draw_overlay
    from ichseg.viz.report import write_report
    from ichseg.viz.viewer import write_viewer

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"output {out_dir} exists and is not a folder")
    if overlap is not None and not 0.0 <= overlap < 1.0:
        raise UsageError(f"overlap {overlap} must lie in [0, 1)")
    cases, notes = list_inputs(inputs)
    for case_id, path in cases:
        target = (out_dir / f"{case_id}.nii.gz").resolve()
        if isinstance(path, Path) and target == path.resolve():
            raise UsageError(f"output {out_dir} would overwrite the input {path}; choose "
                             f"another --out folder")
    # Three threads beside the network's: one reads the next scan while the current one is
    # segmented, one writes a case's label map (and probabilities) and one draws its overlay,
    # both while the next case is segmented.
    # gzip, PNG encoding and numpy release the GIL, so they overlap with each other and with
    # torch. A case's row enters volumes.csv once both its writes are done, in input order, and
    # every write is waited for before this returns or raises: a bad input still leaves the
    # cases before it complete.
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ichseg-read")
    writer = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ichseg-write")
    try:
        predictor = load_models(run_or_checkpoint, checkpoint, device)
        # A scan is refused above the size the model was trained to accept (`data.max_voxels`;
        # an ensemble's largest), which is known once the checkpoint is loaded.
        max_voxels = max(member.cfg.data.max_voxels for member in predictor.members)
        reading = reader.submit(_read_input, cases[0][1], max_voxels) if cases else None
        if save_probabilities is None:
            save_probabilities = predictor.cfg.inference.save_probabilities
        if tta is None:
            tta = predictor.cfg.inference.tta
        names = predictor.class_names
        settings = predictor.cfg.inference
        save_uncertainty = settings.save_uncertainty if save_uncertainty is None else save_uncertainty
        dicom_seg = settings.dicom_seg if dicom_seg is None else dicom_seg
        viewer = settings.viewer if viewer is None else viewer
        cleanup, cleanup_origin = for_predictor(
            predictor, settings.postprocess if postprocess is None else postprocess, tta)

        def say(message: str) -> None:
            if not quiet:
                tqdm.write(message)

        for note in notes:
            say(note)
        say(f"predicting {len(cases)} case(s) with {predictor.source} on {predictor.device}")
        say(f"postprocessing: {cleanup.name} ({cleanup_origin})")
        out_dir.mkdir(parents=True, exist_ok=True)
        write_models_json(out_dir, predictor, tta)
        results: list[dict[str, Any]] = []

        def write_files(case_id: str, path: Path | DicomSeries, volume: Volume,
                        labels: np.ndarray, probability: np.ndarray | None,
                        confidence: case_confidence.CaseConfidence,
                        outside_cavity_ml: float | None) -> dict[str, Any]:
            write_nifti(out_dir / f"{case_id}.nii.gz", labels, volume.affine, like=volume)
            if probability is not None:
                write_nifti(out_dir / PROBABILITIES / f"{case_id}.nii.gz",
                            probability.astype(np.float32), volume.affine, like=volume)
            if confidence.uncertainty is not None:
                write_nifti(out_dir / UNCERTAINTY / f"{case_id}.nii.gz", confidence.uncertainty,
                            volume.affine, like=volume)
            seg = None
            if dicom_seg:
                from ichseg.inference.dicom_seg import dicom_source, write_dicom_seg

                if (series := dicom_source(path)) is not None:
                    seg = write_dicom_seg(series, labels, volume.affine, names,
                                          out_dir / f"{case_id}.seg.dcm")
            volumes = label_volumes_ml(labels, volume.voxel_volume_mm3, names)
            row = {"case": case_id, "input": str(path),
                   "voxel_volume_mm3": volume.voxel_volume_mm3,
                   "hemorrhage_ml": volumes["total"], "empty": volumes["total"] == 0.0,
                   "outside_cavity_ml": outside_cavity_ml,
                   **{f"{name}_ml": volumes[name] for name in names.values()},
                   **abc2_columns(labels, volume.affine, predictor.cfg.data.subtypes),
                   **confidence.row, "postprocessing": cleanup.name,
                   "dicom_seg": str(seg) if seg else None,
                   "output": str(out_dir / f"{case_id}.nii.gz")}
            row["viewer"] = (str(write_viewer(out_dir, case_id, volume, labels, row, names,
                                              confidence.uncertainty)) if viewer else None)
            return row

        pending: tuple[Future, Future] | None = None

        def finish_pending() -> None:
            """Wait for the previous case's files and overlay, then list it in volumes.csv."""
            nonlocal pending
            if pending is None:
                return
            files, overlay = pending
            pending = None
            row = files.result()
            overlay.result()
            results.append(row)
            _write_volumes_csv(out_dir / VOLUMES_CSV, results, names)
            write_report(out_dir, results, names)
            if row["empty"]:
                log.warning("%s: no hemorrhage predicted (empty label map)", row["case"])
            else:
                say(f"{row['case']}: hemorrhage {row['hemorrhage_ml']:.2f} mL")

        bar = tqdm(cases, desc="predict", unit="case", disable=quiet or None)
        for index, (case_id, path) in enumerate(bar):
            bar.set_postfix_str(case_id)
            try:
                volume = reading.result()
            except UsageError as exc:
                finish_pending()
                done = f"; the {len(results)} case(s) before it are in {out_dir}" if results else ""
                raise UsageError(f"{exc}{done}") from None
            if index + 1 < len(cases):
                reading = reader.submit(_read_input, cases[index + 1][1], max_voxels)
            confidence = case_confidence.CaseConfidence(settings, save_uncertainty)
            made = segment(predictor, volume, tta, overlap, save_probabilities, confidence,
                           intracranial_only)
            labels = cleanup.apply(made.labels, volume.voxel_volume_mm3)
            finish_pending()
            pending = (writer.submit(write_files, case_id, path, volume, labels, made.probability,
                                     confidence, made.outside_cavity_ml),
                       writer.submit(draw_overlay, volume, labels,
                                     out_dir / OVERLAYS / f"{case_id}.png", case_id, names))
        finish_pending()
    finally:
        # On an error, the read ahead is not wanted; the writes already started are finished.
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
    say(f"wrote {len(results)} label map(s), overlays, {VOLUMES_CSV} and index.html to {out_dir}")
    return results
