"""Data pipeline speed: synthesis, resampling, the case cache and the patch sampler.

    python benchmarks/data.py [--repeats 5] [--cases 4] [--sections synth,...,transforms]
                              [--transform-presets small,default]

Prints one table; every figure is the median of `--repeats` runs, and the rows that compare two
ways of doing one thing (torch vs scipy resampling, int16 HU vs float32 channels in the cache,
ichseg's augmentation vs the MONAI equivalent) are measured side by side in the same run.

- synth: `make_case` at 256 x 256 x 32 (0.9 mm) and 512 x 512 x 32 (0.45 mm), cases/s.
- resample: a 512 x 512 x 32 HU volume to the `small` grid (2 mm): area-averaged in-plane (what
  preprocessing does for a 4.4x shrink), torch trilinear, scipy.ndimage.zoom at orders 1 and 3.
- restore: a prediction on the `small` grid back onto a 512 x 512 x 32 scan's voxels, as labels:
  `restore_argmax` (only the box around the lesions) against the way before: for 2 classes the
  background probability restored whole and compared with 0.5, for the 6 of the subtype models
  the argmax of the whole restored map; the probabilities are the case's own labels, blurred.
- cache: `load_cases` on a synthetic dataset of 256 x 256 x 32 cases, cold (empty cache: decode,
  preprocess, store) and warm (read the entry, window), for the `small` and `default` presets.
- cache format: one `default`-preset case read back as int16 HU + windowing vs float32 channels.
- sampler: `PatchSampler.batch` for the `tiny` and `small` presets with and without augmentation,
  batches/s; then one fully augmented `small` patch (rotation, scale, flips, all intensity
  transforms) by ichseg's sampler vs MONAI's RandAffined + RandFlipd + intensity transforms.
- transforms: a patch of each `--transform-presets` preset with a single transform applied to
  it (every channel), against the plain cut patch: what each of `data.augmentations` costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ichseg.config import AUGMENTATIONS, preset_config
from ichseg.data.cache import PreprocessedCache, load_cases
from ichseg.data.ct import (
    preprocess_case,
    resample,
    resampled_shape,
    restore_argmax,
    restore_to_native,
    window_channels,
)
from ichseg.data.io import Volume
from ichseg.data.layouts import find_cases
from ichseg.data.sampling import Augmentation, PatchSampler
from ichseg.data.synth import make_case, write_dataset

NATIVE_256 = ((256, 256, 32), (0.9, 0.9, 5.0))
NATIVE_512 = ((512, 512, 32), (0.45, 0.45, 5.0))


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(rows: list, what: str, seconds: float, per: float = 1.0, unit: str = "cases/s",
        note: str = "") -> None:
    rows.append((what, f"{per / seconds:,.2f} {unit}", f"{1000 * seconds / per:,.1f} ms", note))


def bench_synth(rows: list, repeats: int) -> None:
    for shape, spacing in (NATIVE_256, NATIVE_512):
        # A new case index each run: every case draws its own anatomy and lesions.
        indices = iter(range(10_000))
        seconds = median_seconds(
            lambda s=shape, p=spacing, i=indices: make_case(0, s, p, index=next(i)), repeats)
        row(rows, f"synth make_case {shape[0]}x{shape[1]}x{shape[2]}", seconds)


def bench_resample(rows: list, repeats: int) -> None:
    shape, spacing = NATIVE_512
    hu = make_case(0, shape, spacing).hu.astype(np.float32)
    target = preset_config("small").data.spacing
    out = resampled_shape(shape, spacing, target)
    zoom = [o / n for o, n in zip(out, shape, strict=True)]
    area_s = median_seconds(lambda: resample(hu, out, order=1, antialias=True), repeats)
    row(rows, f"resample 512x512x32 -> {out} area-averaged in-plane", area_s, note="used")
    torch_s = median_seconds(lambda: resample(hu, out, order=1), repeats)
    row(rows, f"resample 512x512x32 -> {out} torch linear", torch_s,
        note=f"area {area_s / torch_s:.1f}x this")
    for order in (1, 3):
        scipy_s = median_seconds(lambda o=order: ndimage.zoom(hu, zoom, order=o), repeats)
        row(rows, f"resample 512x512x32 -> {out} scipy order {order}", scipy_s,
            note=f"{scipy_s / torch_s:.1f}x torch")


def bench_restore(rows: list, repeats: int) -> None:
    shape, spacing = NATIVE_512
    case = make_case(0, shape, spacing)
    for subtypes, classes in ((False, 2), (True, 6)):
        cfg = preset_config("small").data
        cfg.subtypes = subtypes
        _, labels, info = preprocess_case(Volume(case.hu, case.affine),
                                          Volume(case.label, case.affine), cfg)
        one_hot = (labels[None] == np.arange(classes)[:, None, None, None]).astype(np.float32)
        blurred = ndimage.gaussian_filter(one_hot, (0, 1, 1, 0.5))
        probabilities = blurred / blurred.sum(axis=0)
        box_s = median_seconds(lambda p=probabilities, i=info: restore_argmax(p, i), repeats)
        row(rows, f"restore labels, {classes} classes: restore_argmax", box_s, note="used")
        if classes == 2:  # the way before: only the background restored, then below 0.5
            what = "background map, then < 0.5"
            whole_s = median_seconds(
                lambda p=probabilities, i=info: restore_to_native(p[:1], i)[0] < 0.5, repeats)
        else:
            what = "whole map, then argmax"
            whole_s = median_seconds(
                lambda p=probabilities, i=info: restore_to_native(p, i).argmax(axis=0), repeats)
        row(rows, f"restore labels, {classes} classes: {what}", whole_s,
            note=f"{whole_s / box_s:.0f}x restore_argmax")


def bench_cache(rows: list, repeats: int, cases: int, work: Path) -> None:
    data = work / "data"
    write_dataset(data, cases, seed=0, shape=NATIVE_256[0], spacing=NATIVE_256[1])
    index = find_cases(data)
    for preset in ("small", "default"):
        cfg = preset_config(preset).data
        colds, warms = [], []
        for attempt in range(repeats):
            cfg.cache_dir = str(work / f"cache_{preset}_{attempt}")
            start = time.perf_counter()
            load_cases(cfg, index.cases, progress=False)
            colds.append(time.perf_counter() - start)
            start = time.perf_counter()
            load_cases(cfg, index.cases, progress=False)
            warms.append(time.perf_counter() - start)
        cold, warm = statistics.median(colds), statistics.median(warms)
        row(rows, f"load_cases {preset} cold (decode + preprocess + store)", cold, cases)
        row(rows, f"load_cases {preset} warm (cache hit)", warm, cases,
            note=f"{cold / warm:.0f}x faster than cold")

    # The stored format: int16 HU windowed at load (what the cache does) vs float32 channels.
    cfg = preset_config("default").data
    cfg.cache_dir = str(work / "cache_default_0")
    cache = PreprocessedCache(cfg)
    case = index.cases[0]
    hu, _, _ = cache.load_hu(case)
    channels_file = work / "channels.npy"
    np.save(channels_file, window_channels(hu, cfg.windows))
    entry = cache.path(case)
    hu_s = median_seconds(lambda: cache.load(case), repeats)
    float_s = median_seconds(lambda: np.load(channels_file), repeats)
    hu_mb = (entry / "hu.npy").stat().st_size / 1e6
    float_mb = channels_file.stat().st_size / 1e6
    row(rows, f"cache entry int16 HU + window at load ({hu_mb:.1f} MB)", hu_s, note="used")
    row(rows, f"cache entry float32 channels ({float_mb:.1f} MB)", float_s,
        note=f"{hu_s / float_s:.1f}x faster, {float_mb / hu_mb:.0f}x larger")


def bench_sampler(rows: list, repeats: int, cases: int, work: Path) -> None:
    index = find_cases(work / "data")
    steps = 10
    for preset in ("tiny", "small"):
        cfg = preset_config(preset)
        cfg.data.cache_dir = str(work / f"cache_{preset}")
        prepared = load_cases(cfg.data, index.cases, progress=False)
        for augment in (False, True):
            cfg.data.augment = augment
            sampler = PatchSampler(prepared, cfg, seed=0)
            epoch = iter(range(1, 10_000))
            seconds = median_seconds(
                lambda s=sampler, e=epoch: [s.batch(next(e), k) for k in range(steps)], repeats)
            patch = "x".join(map(str, cfg.data.patch_size))
            row(rows, f"sampler {preset} batch {cfg.training.batch_size}x{patch} "
                      f"augment={'on' if augment else 'off'}", seconds, steps, "batches/s")
    bench_monai(rows, repeats, prepared, cfg)


def bench_monai(rows: list, repeats: int, prepared: list, cfg) -> None:
    """One fully augmented `small` patch: ichseg's sampler vs the MONAI transforms doing the same
    (rotation about z, in-plane scale, flips on three axes, brightness, contrast, gamma, noise)."""
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
    )

    everything = Augmentation(flip_probability=0.5, rotate_probability=1.0,
                              scale_probability=1.0, brightness_probability=1.0,
                              contrast_probability=1.0, gamma_probability=1.0,
                              noise_probability=1.0)
    cfg.data.augment = True
    sampler = PatchSampler(prepared, cfg, seed=0, augmentation=everything)
    samples = 20
    ours = median_seconds(lambda: [sampler.sample(1, i) for i in range(samples)], repeats)

    patch = tuple(cfg.data.patch_size)
    keys = ("image", "label")
    monai_chain = Compose([
        RandAffined(keys, prob=1.0, rotate_range=(0.0, 0.0, np.deg2rad(15)),
                    scale_range=(0.15, 0.15, 0.0), spatial_size=patch,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        *[RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)],
        RandScaleIntensityd("image", factors=0.25, prob=1.0),
        RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=1.0),
        RandGaussianNoised("image", std=0.05, prob=1.0),
    ])
    # RandAffine rotates about the input's centre: give it a window 1.25 times the patch in-plane
    # around the chosen centre, so the rotated corners stay inside real data.
    window = (int(patch[0] * 1.25), int(patch[1] * 1.25), patch[2])

    def monai_samples() -> None:
        for i in range(samples):
            rng = np.random.default_rng([0, 1, i])
            case = prepared[int(rng.integers(len(prepared)))]
            corner = [int(rng.integers(0, max(1, n - w + 1)))
                      for n, w in zip(case.label.shape, window, strict=True)]
            box = tuple(slice(c, c + w) for c, w in zip(corner, window, strict=True))
            monai_chain.set_random_state(seed=int(rng.integers(2**31)))
            channels = window_channels(case.hu[box], cfg.data.windows)  # as the sampler does
            monai_chain({"image": torch.from_numpy(channels),
                         "label": torch.from_numpy(case.label[box][None].astype(np.float32))})

    monai_s = median_seconds(monai_samples, repeats)
    row(rows, "fully augmented small patch, ichseg sampler", ours, samples, "patches/s",
        note="used")
    row(rows, "fully augmented small patch, MONAI transforms", monai_s, samples, "patches/s",
        note=f"{monai_s / ours:.1f}x slower")


def bench_transforms(rows: list, repeats: int, cases: int, work: Path,
                     presets: list[str]) -> None:
    data = work / "data"
    if not (data / "dataset.json").exists():
        write_dataset(data, cases, seed=0, shape=NATIVE_256[0], spacing=NATIVE_256[1])
    index = find_cases(data)
    samples = 10
    for preset in presets:
        cfg = preset_config(preset)
        cfg.data.cache_dir = str(work / f"cache_{preset}")
        prepared = load_cases(cfg.data, index.cases, progress=False)
        patch = "x".join(map(str, cfg.data.patch_size))
        cfg.data.augment = False
        plain = PatchSampler(prepared, cfg, seed=0)
        plain_s = median_seconds(lambda s=plain: [s.sample(1, i) for i in range(samples)],
                                 repeats)
        row(rows, f"{preset} patch {patch}, cut only", plain_s, samples, "patches/s")
        cfg.data.augment = True
        for name in AUGMENTATIONS:
            cfg.data.augmentations = [name]
            applied = Augmentation(**{f"{other}_probability": float(other == name)
                                      for other in AUGMENTATIONS},
                                   blur_channel_probability=1.0,
                                   low_resolution_channel_probability=1.0)
            sampler = PatchSampler(prepared, cfg, seed=0, augmentation=applied)
            seconds = median_seconds(lambda s=sampler: [s.sample(1, i) for i in range(samples)],
                                     repeats)
            row(rows, f"{preset} patch {patch}, + {name}", seconds, samples, "patches/s",
                note=f"+{1000 * (seconds - plain_s) / samples:.1f} ms")


SECTIONS = ("synth", "resample", "restore", "cache", "sampler", "transforms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated, of: " + ", ".join(SECTIONS))
    parser.add_argument("--transform-presets", default="small,default")
    args = parser.parse_args()
    sections = args.sections.split(",")
    if unknown := set(sections) - set(SECTIONS):
        parser.error(f"unknown sections {', '.join(sorted(unknown))}")
    rows: list = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        if "synth" in sections:
            bench_synth(rows, args.repeats)
        if "resample" in sections:
            bench_resample(rows, args.repeats)
        if "restore" in sections:
            bench_restore(rows, args.repeats)
        if "cache" in sections:
            bench_cache(rows, args.repeats, args.cases, work)
        if "sampler" in sections:
            if "cache" not in sections:
                write_dataset(work / "data", args.cases, seed=0, shape=NATIVE_256[0],
                              spacing=NATIVE_256[1])
            bench_sampler(rows, args.repeats, args.cases, work)
        if "transforms" in sections:
            bench_transforms(rows, args.repeats, args.cases, work,
                             args.transform_presets.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs; medians of {args.repeats}")
    print(f"| {'what':62s} | {'rate':>16s} | {'per item':>10s} | note |")
    print(f"|{'-' * 64}|{'-' * 18}|{'-' * 12}|------|")
    for what, rate, per_item, note in rows:
        print(f"| {what:62s} | {rate:>16s} | {per_item:>10s} | {note} |")


if __name__ == "__main__":
    main()
