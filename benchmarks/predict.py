"""Prediction speed and memory on one 512 x 512 x 32 head CT (0.45 x 0.45 x 5 mm), per preset.

    python benchmarks/predict.py [--presets small default] [--repeats 3] [--default-repeats 1]
    python benchmarks/predict.py --checkpoint RUN/checkpoints/best.pt [--repeats 3]

Untrained weights per preset (the network's time does not depend on them), or a trained
checkpoint (whose outlines are what the overlay really draws; an untrained network's speckle
makes it slower). Four ways, alternated in each repetition so that the machine's load falls on
all of them alike:

- MONAI direct: `monai.inferers.sliding_window_inference` called on the already preprocessed
  volume with the same network, windows (patch size), overlap, blending and sw_batch_size;
- ichseg segment: `ichseg.inference.predict.segment` on the scan in memory: preprocessing (RAS,
  crop to the head, resampling, windows), the same sliding windows, softmax, and the label map on
  the native 512 x 512 x 32 grid (the background probability interpolated around the lesions);
- ichseg predict: the whole `predict_cases` of one file: load the checkpoint (while the NIfTI is
  read), segment, write the label map, the overlay PNG and volumes.csv;
- ichseg predict, 4 scans, per scan: the same for a folder of four scans, divided by four (each
  scan is read while the one before it is segmented, and its files written while the next is).

The `default` preset times only MONAI direct and the whole predict: one pass of its network takes
minutes on a CPU, and its fixed costs are the `small` preset's.

Then, for each preset but `default`, the stages of one whole predict on a time line (the stage
functions wrapped with timers): where the time beyond the network goes.

Peak memory is the process's resident-set high-water mark during each way (reset between them
through /proc/self/clear_refs), so it includes the interpreter, torch and the model.
Each preset runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPE = (512, 512, 32)
SPACING = (0.45, 0.45, 5.0)
SERIES = 4


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the high-water mark then covers everything before it too


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# Where one whole predict's time goes: module, function and the name printed.
STAGES = (("ichseg.inference.ensemble", "load_predictor", "load the checkpoint"),
          ("ichseg.inference.predict", "_read_input", "read the scan (beside the load)"),
          ("ichseg.inference.predict", "segment", "segment"),
          ("ichseg.inference.predict", "write_nifti", "write the label map"),
          ("ichseg.viz.overlay", "draw_overlay", "draw and write the overlay"),
          ("ichseg.inference.predict", "_write_volumes_csv", "write volumes.csv"))


def stage_timeline(run_predict, repeats: int) -> dict[str, list[float]]:
    """Median start and end (seconds from the call) of each stage of `run_predict()`, whichever
    thread ran it, and the whole call: the stage functions are wrapped for the measurement."""
    import importlib
    from unittest import mock

    spans: dict[str, list[list[float]]] = {name: [] for *_, name in STAGES}
    spans["whole predict"] = []
    origin = [0.0]

    def timed(function, name):
        def wrapper(*args, **kwargs):
            start = time.perf_counter() - origin[0]
            try:
                return function(*args, **kwargs)
            finally:
                spans[name].append([start, time.perf_counter() - origin[0]])
        return wrapper

    patches = [mock.patch.object(importlib.import_module(module), function,
                                 timed(getattr(importlib.import_module(module), function), name))
               for module, function, name in STAGES]
    for patch in patches:
        patch.start()
    try:
        for _ in range(repeats):
            origin[0] = time.perf_counter()
            run_predict()
            spans["whole predict"].append([0.0, time.perf_counter() - origin[0]])
    finally:
        for patch in patches:
            patch.stop()
    return {name: [statistics.median(s[0] for s in runs), statistics.median(s[1] for s in runs)]
            for name, runs in spans.items() if runs}


ALL_WAYS = ("MONAI direct", "ichseg segment", "ichseg predict",
            f"ichseg predict, {SERIES} scans, per scan")
DEFAULT_PRESET_WAYS = ("MONAI direct", "ichseg predict")


def worker(preset: str, scan: Path, repeats: int, trained: Path | None) -> dict:
    """Time the ways on `scan` with an untrained `preset` network, or the `trained` checkpoint's
    (its own config); return the figures."""
    import torch
    from monai.inferers import sliding_window_inference

    from ichseg.config import preset_config
    from ichseg.data.ct import preprocess_case
    from ichseg.data.dicom import read_scan
    from ichseg.inference.predict import predict_cases, segment
    from ichseg.inference.predictor import load_predictor
    from ichseg.models import build_model
    from ichseg.models.window import windows_per_pass

    tmp = Path(tempfile.mkdtemp(prefix=f"bench_predict_{preset}_"))
    if trained is not None:
        checkpoint = trained
    else:
        cfg = preset_config(preset)
        torch.manual_seed(0)
        checkpoint = tmp / "model.pt"
        torch.save({"model_state": build_model(cfg).state_dict(), "config": cfg.to_dict()},
                   checkpoint)
    predictor = load_predictor(checkpoint, device="cpu")
    cfg = predictor.cfg
    volume = read_scan(scan)
    channels, _, info = preprocess_case(volume, None, cfg.data)
    image = torch.from_numpy(channels)[None]
    windows = windows_per_pass(cfg.inference.sw_batch_size, image.device)

    def monai_direct() -> None:
        with torch.no_grad():
            sliding_window_inference(image, cfg.data.patch_size, windows,
                                     predictor.model, overlap=cfg.inference.overlap,
                                     mode=cfg.inference.blend)

    def ichseg_segment() -> None:
        segment(predictor, volume)

    def ichseg_predict() -> None:
        predict_cases(checkpoint, [scan], tmp / "out", device="cpu", quiet=True)

    # A folder of the same scan under SERIES names: a case's files are written while the next
    # one is segmented, so per scan a series costs less than one scan alone.
    series = tmp / "series"
    series.mkdir()
    for index in range(SERIES):
        (series / f"scan{index}.nii.gz").symlink_to(scan)

    def ichseg_predict_series() -> None:
        predict_cases(checkpoint, [series], tmp / "out_series", device="cpu", quiet=True)

    ways = {"MONAI direct": (monai_direct, 1), "ichseg segment": (ichseg_segment, 1),
            "ichseg predict": (ichseg_predict, 1),
            f"ichseg predict, {SERIES} scans, per scan": (ichseg_predict_series, SERIES)}
    wanted = DEFAULT_PRESET_WAYS if preset == "default" else ALL_WAYS
    ways = {name: way for name, way in ways.items() if name in wanted}
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    peak: dict[str, float] = {}
    if preset != "default":
        # Warm-up: numba's compiled scan, torch's first-call allocations (a second's worth,
        # next to the `default` network's minutes a pass, which gets none).
        monai_direct()
    for _ in range(repeats):
        for name, (run, scans) in ways.items():
            _reset_peak_rss()
            start = time.perf_counter()
            run()
            seconds[name].append((time.perf_counter() - start) / scans)
            peak[name] = max(peak.get(name, 0.0), _peak_rss_mib())
    stages = stage_timeline(ichseg_predict, repeats) if preset != "default" else {}
    return {"preset": f"{cfg.preset} (trained)" if trained else preset, "network_grid": list(info.resampled_shape),
            "patch": list(cfg.data.patch_size), "overlap": cfg.inference.overlap,
            "sw_batch_size": windows, "threads": torch.get_num_threads(),
            "repeats": repeats, "seconds": seconds, "peak_mib": peak, "stages": stages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["small", "default"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--default-repeats", type=int, default=1,
                        help="repetitions for the default preset (minutes each on a CPU)")
    parser.add_argument("--checkpoint", type=Path,
                        help="time this trained checkpoint (a run's best.pt) instead of untrained "
                             "presets: a trained network's outlines are what the overlay draws")
    parser.add_argument("--worker", nargs=3, metavar=("PRESET", "SCAN", "CHECKPOINT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        preset, scan, trained = args.worker
        print(json.dumps(worker(preset, Path(scan), args.repeats,
                                Path(trained) if trained else None)))
        return

    import torch

    from ichseg.data.io import write_nifti
    from ichseg.data.synth import make_case

    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    case = make_case(0, shape=SHAPE, spacing=SPACING)
    scan = write_nifti(tmp / "scan.nii.gz", case.hu, case.affine)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; scan {SHAPE} at {SPACING} mm")
    print("| preset | grid | way | seconds (median) | runs | ratio to MONAI | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    runs = ([("trained", str(args.checkpoint.resolve()))] if args.checkpoint
            else [(preset, "") for preset in args.presets])
    stage_rows: list[tuple[str, str, float, float]] = []
    for preset, trained in runs:
        repeats = args.default_repeats if preset == "default" else args.repeats
        out = subprocess.run([sys.executable, __file__, "--worker", preset, str(scan), trained,
                              "--repeats", str(repeats)], check=True, capture_output=True,
                             text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        medians = {k: statistics.median(v) for k, v in result["seconds"].items()}
        grid = "x".join(str(n) for n in result["network_grid"])
        for way, median in medians.items():
            ratio = median / medians["MONAI direct"]
            print(f"| {result['preset']} | {grid} | {way} | {median:.2f} "
                  f"| {len(result['seconds'][way])} | {ratio:.2f}x "
                  f"| {result['peak_mib'][way]:.0f} |", flush=True)
        stage_rows.extend((result["preset"], name, start, end)
                          for name, (start, end) in result["stages"].items())
    if stage_rows:
        print("\nOne whole predict of one scan, stage by stage (median start and end in seconds "
              "from the call; stages on other threads overlap):")
        print("| preset | stage | start | end | seconds |")
        print("|---|---|---|---|---|")
        for preset, name, start, end in stage_rows:
            print(f"| {preset} | {name} | {start:.3f} | {end:.3f} | {end - start:.3f} |")


if __name__ == "__main__":
    main()
