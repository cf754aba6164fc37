"""The `ichseg` command: argument parsing over `ichseg.api`, and the exit codes of the contract.

Exit codes: 0 finished or stopped cleanly; 2 bad usage or bad input (one sentence, no traceback,
nothing on disk changed); 1 anything unexpected.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ichseg import __version__
from ichseg.errors import DiskFull, OtherRankFailed, UsageError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ichseg",
        description="Intracranial hemorrhage segmentation on head CT with an nnMamba U-Net.")
    parser.add_argument("--version", action="version", version=f"ichseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("synth", help="write synthetic head CTs with hemorrhages (NIfTI)")
    p.add_argument("out", help="output folder")
    p.add_argument("--cases", type=_positive_int, required=True, help="number of cases")
    p.add_argument("--seed", type=_positive_int, default=0)
    p.add_argument("--shape", type=_positive_int, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"))

    p = sub.add_parser("inspect", help="fingerprint a dataset and list every problem found")
    p.add_argument("data", help="dataset folder")
    p.add_argument("--layout", default="auto")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("train", help="train, or continue training, a run")
    p.add_argument("--data", help="dataset folder (on continue, taken from RUN/config.yaml)")
    p.add_argument("--run-dir", required=True, help="run folder")
    p.add_argument("--mode", choices=("continue", "new"), default="continue",
                   help="continue (default) resumes the newest valid checkpoint; new archives "
                        "an existing run and starts at epoch 1")
    p.add_argument("--preset", choices=("tiny", "small", "default"))
    target = p.add_mutually_exclusive_group()
    target.add_argument("--epochs", type=_positive_int, help="total epochs to reach")
    target.add_argument("--additional-epochs", type=_positive_int,
                        help="epochs to train beyond the checkpoint resumed")
    p.add_argument("--config", dest="config_file", help="YAML config file")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. training.lr=0.001 (repeatable)")
    p.add_argument("--seed", type=_positive_int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--save-every-steps", type=_positive_int)
    p.add_argument("--save-every-minutes", type=float)
    p.add_argument("--time-limit", metavar="DURATION", help="like 90s, 45m, 11h30m")
    p.add_argument("--patience", type=_positive_int, help="0 never stops early")
    p.add_argument("--resume-from", metavar="CHECKPOINT",
                   help="start from a checkpoint made elsewhere (legacy format included)")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start a new run from a checkpoint's weights alone (fine-tuning): own "
                        "optimizer and schedule; layers that do not fit start fresh")
    p.add_argument("--fold", type=_positive_int, metavar="K",
                   help="train cross-validation fold K (0 to data.folds - 1): validate on part "
                        "K of the cases, train on the rest")
    p.add_argument("--mirror-dir", metavar="DIR",
                   help="copy each checkpoint here too (e.g. Google Drive)")
    p.add_argument("--strict-resume", action="store_true",
                   help="on continue, exit 2 instead of starting new when nothing is saved")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("status", help="where a run stands")
    p.add_argument("run", help="run folder")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("predict", help="segment scans (NIfTI files or folders, DICOM series or studies)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", action="append",
                        help="run folder (its best model by default), or a folder of runs; "
                             "repeat it to predict with the ensemble of several")
    source.add_argument("--checkpoint", action="append",
                        help="a checkpoint file (repeatable, like --run)")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tta", action="store_true",
                   help="mirror test-time augmentation (default: the run's inference.tta)")
    p.add_argument("--dicom-seg", action="store_true", default=None,
                   help="also write a DICOM SEG for each DICOM series input")
    p.add_argument("--no-postprocess", dest="postprocess", action="store_false", default=None,
                   help="do not apply the run's chosen postprocessing")
    p.add_argument("--uncertainty", dest="save_uncertainty", action="store_true", default=None,
                   help="also write the per-voxel uncertainty map")
    p.add_argument("--keep-outside-cavity", dest="intracranial_only", action="store_false",
                   default=None, help="keep what is predicted outside the cranial cavity "
                   "(default: the run's inference.intracranial_only, on: dropped)")
    p.add_argument("--no-viewer", dest="viewer", action="store_false", default=None,
                   help="write no viewer pages (default: the run's inference.viewer, on)")

    p = sub.add_parser("crossval", help="the cross-validation table of trained fold runs")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="fold run folders, or a folder holding them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tta", action="store_true", help="mirror test-time augmentation")
    p.add_argument("--checkpoint", choices=("best", "last"), default="best",
                   help="which model of each run predicts (default: best)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("postprocess", help="choose a run's postprocessing on its validation cases")
    p.add_argument("run", nargs="+", help="run folder; several (the fold runs of a "
                   "cross-validation) choose together on all their validation cases")

    p = sub.add_parser("evaluate", help="compare predictions with ground-truth label maps")
    p.add_argument("--pred", required=True)
    p.add_argument("--gt", required=True)
    p.add_argument("--out")
    p.add_argument("--nsd-tolerance", type=float, default=0.42, metavar="MM",
                   help="tolerance of the normalised surface Dice (INSTANCE 2022: 0.42 mm)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("plot", help="redraw RUN/progress.png")
    p.add_argument("run")
    return parser


def _run(args: argparse.Namespace) -> int:
    from ichseg import api

    if args.command == "synth":
        ids = api.synthesize(args.out, args.cases, seed=args.seed, shape=args.shape,
                             spacing=args.spacing)
        print(f"wrote {len(ids)} synthetic cases to {args.out}")
        return 0
    if args.command == "inspect":
        from ichseg.data.inspect import format_fingerprint

        report = api.inspect(args.data, layout=args.layout)
        print(json.dumps(report, indent=2) if args.json else format_fingerprint(report))
        problems = report["problems"]
        if problems:
            # The contract: bad input exits 2 naming the file; the report above lists them all.
            more = f" (and {len(problems) - 1} more listed above)" if len(problems) > 1 else ""
            raise UsageError(problems[0] + more)
        return 0
    if args.command == "train":
        options = {k: getattr(args, k) for k in (
            "preset", "epochs", "additional_epochs", "config_file", "sets", "seed", "device",
            "save_every_steps", "save_every_minutes", "time_limit", "patience", "resume_from",
            "mirror_dir", "strict_resume", "quiet", "fold", "init_from")}
        api.train(args.data, args.run_dir, mode=args.mode, **options)
        return 0
    if args.command == "status":
        from ichseg.training.status import format_status

        status = api.check_training_status(args.run)
        print(json.dumps(status, indent=2) if args.json else format_status(status))
        return 0
    if args.command == "predict":
        api.predict(args.run or args.checkpoint, args.inputs, args.out, tta=args.tta or None,
                    dicom_seg=args.dicom_seg, postprocess=args.postprocess,
                    save_uncertainty=args.save_uncertainty,
                    intracranial_only=args.intracranial_only, viewer=args.viewer)
        return 0
    if args.command == "postprocess":
        from ichseg.inference.postprocess import format_choice

        print(format_choice(api.postprocess(args.run)))
        return 0
    if args.command == "crossval":
        from ichseg.crossval import format_crossval

        report = api.crossval(args.runs, args.out, tta=args.tta, checkpoint=args.checkpoint)
        print(json.dumps(report, indent=2) if args.json else format_crossval(report))
        return 0
    if args.command == "evaluate":
        from ichseg.evaluation.evaluate import format_summary

        report = api.evaluate(args.pred, args.gt, args.out, args.nsd_tolerance)
        print(json.dumps(report, indent=2) if args.json else format_summary(report))
        return 0
    if args.command == "plot":
        print(api.plot(args.run))
        return 0
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except (UsageError, DiskFull, OtherRankFailed) as exc:
        print(f"ichseg {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # A second Ctrl-C during training lands here: the last committed checkpoint is intact.
        print(f"ichseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
