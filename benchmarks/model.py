"""nnMamba against the DynUNet baseline of about the same size: time, memory, parameter counts.

    python benchmarks/model.py [--presets tiny small] [--repeats 5]

Time: one training step's forward + backward (deep supervision on, every output in the loss) at
the preset's patch and batch size; the two networks alternate step by step in one process so
that the machine's load hits both alike, and the medians are compared. Memory: the peak resident
memory one step adds on top of the built model and its input, measured in a fresh process per
network (freed memory stays with the allocator, so a second network in one process would reuse
it unseen). Counts: parameters of every preset.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from ichseg.config import PRESETS, preset_config
from ichseg.models import build_model, selective_scan
from ichseg.models.baseline import matching_width, parameter_count
from ichseg.models.mamba import causal_depthwise_conv1d

NETWORKS = ("nnmamba", "dynunet")
PAPER_PARAMETERS = 15.55e6


def setup(preset: str, network: str, seed: int = 0):
    cfg = preset_config(preset)
    cfg.model.name = network
    torch.manual_seed(seed)
    model = build_model(cfg).train()
    shape = (cfg.training.batch_size, cfg.in_channels, *cfg.data.patch_size)
    images = torch.rand(shape)
    labels = (torch.rand(shape[:1] + shape[2:]) > 0.9).long()
    return model, images, labels


def training_step(model, images, labels) -> None:
    """Forward, a cross-entropy over every deep-supervision output, backward."""
    loss = 0.0
    for logits in model(images):
        target = F.interpolate(labels[:, None].float(), logits.shape[2:], mode="nearest")
        loss = loss + F.cross_entropy(logits, target[:, 0].long())
    loss.backward()
    model.zero_grad(set_to_none=True)


def warm_up_scan() -> None:
    """Compile the cpu scan's kernels (numba) so neither timing nor memory includes it."""
    u = torch.randn(1, 4, 64, requires_grad=True)
    out = selective_scan(u, torch.rand(1, 4, 64), -torch.rand(4, 16), torch.randn(1, 16, 64),
                         torch.randn(1, 16, 64), torch.ones(4), z=torch.randn(1, 4, 64),
                         delta_bias=torch.zeros(4), delta_softplus=True, backend="auto")
    out.sum().backward()


def time_side_by_side(preset: str, repeats: int) -> dict[str, list[float]]:
    warm_up_scan()
    runs = {name: setup(preset, name) for name in NETWORKS}
    for run in runs.values():
        training_step(*run)  # first step: allocator and oneDNN warm-up
    seconds: dict[str, list[float]] = {name: [] for name in NETWORKS}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            training_step(*run)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def time_causal_conv(repeats: int) -> dict[str, float]:
    """Forward + backward of Mamba's depthwise causal conv at `small`'s first stage (4 flipped
    copies of a batch of 2, 2 x 16 channels, 24 x 24 x 32 tokens): nn.Conv1d against the shifted
    products ichseg uses, alternated, medians."""
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(32, 32, 4, groups=32, padding=3)
    # The scan input is half of in_proj's output, as in the layer: a view, not a copy.
    projected = torch.randn(8, 64, 24 * 24 * 32, requires_grad=True)
    grad = torch.randn(8, 32, projected.shape[-1])
    ways = {
        "nn.Conv1d": lambda x: conv(x)[..., :x.shape[-1]],
        "shifted products": lambda x: causal_depthwise_conv1d(x, conv.weight, conv.bias),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats + 1):  # the first round warms up
        for name, way in ways.items():
            start = time.perf_counter()
            way(projected.chunk(2, dim=1)[0]).backward(grad)
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values[1:]) for name, values in seconds.items()}


def _peak_resident_bytes() -> int:
    with open("/proc/self/status") as f:
        peak_kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    return int(peak_kib) * 1024


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def step_peak_memory(preset: str, network: str) -> int:
    """Run in a fresh process: bytes one training step adds to the resident memory at its peak."""
    warm_up_scan()
    run = setup(preset, network)
    # Writing 5 to clear_refs resets the high-water mark (Linux >= 4.0), so that the imports'
    # and the warm-up's own peaks do not count.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _resident_bytes()
    training_step(*run)
    return _peak_resident_bytes() - before


def measure_memory_in_subprocess(preset: str, network: str) -> int:
    out = subprocess.run([sys.executable, __file__, "--memory-of", preset, network],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["bytes"]


def parameter_table() -> list[str]:
    rows = ["| preset | nnMamba parameters | DynUNet parameters (base width) | DynUNet / nnMamba |",
            "|---|---:|---:|---:|"]
    for preset in PRESETS:
        cfg = preset_config(preset)
        with torch.device("meta"):
            mamba = parameter_count(build_model(cfg))
            cfg.model.name = "dynunet"
            dyn = parameter_count(build_model(cfg))
        rows.append(f"| {preset} | {mamba:,} | {dyn:,} ({matching_width(cfg)}) | "
                    f"{dyn / mamba:.3f} |")
    with torch.device("meta"):
        default = parameter_count(build_model(preset_config("default")))
    rows.append(f"\n`default` against the paper's 15.55 M: {default / 1e6:.3f} M, "
                f"{100 * (default / PAPER_PARAMETERS - 1):+.1f} %")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=PRESETS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-of", nargs=2, metavar=("PRESET", "NETWORK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps({"bytes": step_peak_memory(*args.memory_of)}))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("\n".join(parameter_table()))
    conv = time_causal_conv(args.repeats)
    print(f"\nDepthwise causal conv forward + backward, median of {args.repeats}: " + ", ".join(
        f"{name} {value:.3f} s" for name, value in conv.items()))
    print(f"\nForward + backward of one training step, median of {args.repeats} alternated "
          "steps; peak memory the step adds\n")
    print("| preset | patch × batch | nnMamba s | DynUNet s | nnMamba / DynUNet | "
          "nnMamba MiB | DynUNet MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for preset in args.presets:
        cfg = preset_config(preset)
        seconds = time_side_by_side(preset, args.repeats)
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        memory = {name: measure_memory_in_subprocess(preset, name) / 2**20 for name in NETWORKS}
        patch = "×".join(str(s) for s in cfg.data.patch_size)
        print(f"| {preset} | {patch} × {cfg.training.batch_size} | {medians['nnmamba']:.2f} | "
              f"{medians['dynunet']:.2f} | {medians['nnmamba'] / medians['dynunet']:.2f} | "
              f"{memory['nnmamba']:.0f} | {memory['dynunet']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
