"""The Python API: plain functions, one per command. The CLI only parses arguments and calls these.

Each function imports its implementation on first use, so importing `ichseg` stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def synthesize(out_dir: str | Path, cases: int, seed: int = 0,
               shape: Sequence[int] | None = None,
               spacing: Sequence[float] | None = None) -> list[str]:
    """Write `cases` synthetic head CTs with hemorrhages to `out_dir`; return the case ids."""
    from ichseg.data.synth import write_dataset

    return write_dataset(out_dir, cases, seed=seed, shape=shape, spacing=spacing)


def inspect(data: str | Path, layout: str = "auto") -> dict[str, Any]:
    """The dataset fingerprint: layout, cases, shapes, spacings, HU and label statistics, problems."""
    from ichseg.data.inspect import fingerprint

    return fingerprint(data, layout=layout)


def train(data: str | Path | None, run_dir: str | Path, mode: str = "continue",
          **options: Any) -> Any:
    """Train (or continue training) in `run_dir`; see `ichseg train --help` for the options.

    Options: preset, epochs, additional_epochs, config_file, sets, seed, device,
    save_every_steps, save_every_minutes, time_limit, patience, resume_from, mirror_dir,
    strict_resume, quiet, fold (train cross-validation fold K of `data.folds`), init_from (a
    checkpoint whose weights a new run starts from). A run that ends (not a stopped sitting)
    then chooses its postprocessing on its validation cases. Returns a `TrainResult`.
    """
    from ichseg.training.modes import run_training

    return run_training(data, run_dir, mode=mode, after_training=_choose_postprocessing,
                        **options)


def _choose_postprocessing(run_dir: Path, cfg: Any, quiet: bool) -> None:
    """At the end of training (not of a stopped sitting), as nnU-Net does: the run's
    postprocessing chosen on its validation cases, unless `inference.postprocess` is off."""
    from ichseg.inference.postprocess_choice import choose_postprocessing

    if cfg.inference.postprocess:
        choose_postprocessing(run_dir, quiet=quiet)


def check_training_status(run_dir: str | Path) -> dict[str, Any]:
    """Where a run stands: epochs, state, best value, checkpoints and the command to continue."""
    from ichseg.training.status import training_status

    return training_status(run_dir)


def predict(run_or_checkpoint: str | Path | Sequence[str | Path],
            inputs: Sequence[str | Path] | str | Path,
            out_dir: str | Path, **options: Any) -> list[dict[str, Any]]:
    """Segment NIfTI files, folders of them or DICOM series; one result per case.

    Several runs or checkpoints (a list, or a folder of runs) predict as an ensemble: their
    class probabilities are averaged before the argmax."""
    from ichseg.inference.predict import predict_cases

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    return predict_cases(run_or_checkpoint, list(inputs), out_dir, **options)


def postprocess(run_dir: str | Path | Sequence[str | Path],
                quiet: bool = False) -> dict[str, Any]:
    """Choose a run's postprocessing on its validation cases (RUN/postprocessing.json); several
    runs (a cross-validation's folds) choose one together on all their validation cases."""
    from ichseg.inference.postprocess_choice import choose_postprocessing

    return choose_postprocessing(run_dir, quiet=quiet)


def evaluate(pred_dir: str | Path, gt_dir: str | Path,
             out_dir: str | Path | None = None, nsd_tolerance_mm: float = 0.42) -> dict[str, Any]:
    """Compare predicted label maps with ground truth: per-case metrics, mean and median.

    `nsd_tolerance_mm`: the tolerance of `nsd` (INSTANCE 2022's 0.42 mm by default)."""
    from ichseg.evaluation.evaluate import evaluate_folders

    return evaluate_folders(pred_dir, gt_dir, out_dir, nsd_tolerance_mm)


def crossval(runs: Sequence[str | Path] | str | Path, out_dir: str | Path,
             **options: Any) -> dict[str, Any]:
    """The cross-validation table: each fold run's model on its own validation cases, per case
    and summarised across folds (options: tta, checkpoint, device, quiet)."""
    from ichseg.crossval import cross_validate

    if isinstance(runs, (str, Path)):
        runs = [runs]
    return cross_validate(list(runs), out_dir, **options)


def plot(run_dir: str | Path) -> Path:
    """Redraw `RUN/progress.png` from the run's history; return its path."""
    from ichseg.viz.progress import plot_run

    return plot_run(run_dir)
