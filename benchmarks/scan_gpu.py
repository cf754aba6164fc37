"""The GPU check, prepared for a machine with a CUDA device and mamba-ssm (`pip install -e
'.[cuda]'`): mamba-ssm's kernel (`cuda` backend) against the `reference` loop, the three backends
timed side by side, and one mixed-precision training step of the `small` nnMamba.

    python benchmarks/scan_gpu.py [--lengths 512 4096 32768] [--repeats 5]

Without a CUDA device or mamba-ssm it says which is missing and exits 0, so that it can sit in
the tree of a CPU-only project. Prints markdown tables: BENCHMARKS.md quotes them with the command.

1. Agreement: on random inputs of several shapes, with and without z, D and delta_bias, the
   output, the last state and every gradient of `cuda` against `reference` (both on the GPU, in
   float32), as the norm-wise relative error; and `cuda` under bfloat16 autocast against itself
   without (the scan always runs in float32, so they must agree to float32 rounding).
2. Speed: forward and forward+backward medians of `reference` and `cuda` on the GPU and `cpu`
   on the host, batch 1, 128 channels, state 16 (the shapes of benchmarks/scan.py), with the
   GPU's peak memory of each.
3. AMP: one training step of the `small` network on the GPU in float32 and under bf16 autocast:
   both losses finite, and their times.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from scan import make_inputs  # benchmarks/scan.py: the CPU benchmark's inputs and shapes

from ichseg.models.ssm import available_backends, selective_scan

AGREEMENT_SHAPES = [  # (batch, channels, state, length)
    (1, 8, 4, 1), (2, 16, 16, 64), (2, 64, 16, 1000), (1, 130, 8, 513)]
ORDER = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def random_inputs(batch, channels, state, length, options, device, seed):
    g = torch.Generator().manual_seed(seed)
    full = {"u": torch.randn(batch, channels, length, generator=g),
            "delta": torch.randn(batch, channels, length, generator=g) * 0.5 - 2.0,
            "A": -torch.rand(channels, state, generator=g) * state - 0.5,
            "B": torch.randn(batch, state, length, generator=g),
            "C": torch.randn(batch, state, length, generator=g),
            "D": torch.randn(channels, generator=g),
            "z": torch.randn(batch, channels, length, generator=g),
            "delta_bias": torch.randn(channels, generator=g) * 0.1}
    return {k: (v.to(device).requires_grad_() if k in options or k in ORDER[:5] else None)
            for k, v in full.items()}


def run_scan(inputs, backend, softplus=True):
    out, last = selective_scan(*(inputs[k] for k in ORDER), delta_softplus=softplus,
                               return_last_state=True, backend=backend)
    leaves = [t for t in (inputs[k] for k in ORDER) if t is not None]
    # The loss reads the output only: mamba-ssm's backward ignores a gradient of the last state.
    grads = torch.autograd.grad((out * torch.cos(out.detach())).sum(), leaves)
    return [out, last, *grads]


def relative_error(got, want):
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def agreement_table():
    print("| batch, channels, state, length | options | worst relative error, cuda vs "
          "reference (out, last state, gradients) | bf16 autocast vs float32 |")
    print("|---|---|---:|---:|")
    worst_all = 0.0
    for seed, shape in enumerate(AGREEMENT_SHAPES):
        for options in (("D", "z", "delta_bias"), ()):
            inputs = random_inputs(*shape, options, "cuda", seed)
            reference = run_scan(inputs, "reference")
            fast = run_scan(inputs, "cuda")
            worst = max(relative_error(g, w) for g, w in zip(fast, reference, strict=True))
            with torch.autocast("cuda", dtype=torch.bfloat16):
                autocast = run_scan(inputs, "cuda")
            drift = max(relative_error(a, f) for a, f in zip(autocast, fast, strict=True))
            worst_all = max(worst_all, worst)
            print(f"| {', '.join(map(str, shape))} | {'+'.join(options) or 'none'} | "
                  f"{worst:.1e} | {drift:.1e} |", flush=True)
    print(f"\nworst cuda-vs-reference error {worst_all:.1e} (the CPU backend's tests hold 1e-5)\n")


def timed(fn, repeats, device):
    times = []
    for _ in range(repeats + 1):  # the first call warms up (kernel load, numba cache)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def speed_table(lengths, repeats):
    print("| length | pass | reference (GPU) s | cpu (host) s | cuda s | cuda peak MiB |")
    print("|---|---|---:|---:|---:|---:|")
    for length in lengths:
        for backward in (False, True):
            row = {}
            for backend, device in (("reference", "cuda"), ("cpu", "cpu"), ("cuda", "cuda")):
                inputs = {k: v.detach().to(device).requires_grad_(backward)
                          for k, v in make_inputs(length, False).items()}

                def once(inputs=inputs, backend=backend, backward=backward):
                    out = selective_scan(*(inputs[k] for k in ORDER), delta_softplus=True,
                                         backend=backend)
                    if backward:
                        torch.autograd.grad(out, list(inputs.values()), torch.ones_like(out))

                with torch.set_grad_enabled(backward):
                    torch.cuda.reset_peak_memory_stats()
                    row[backend] = timed(once, repeats, device)
                    row["peak"] = torch.cuda.max_memory_allocated() / 2**20
            print(f"| {length:,} | {'forward+backward' if backward else 'forward'} | "
                  f"{row['reference']:.4f} | {row['cpu']:.4f} | {row['cuda']:.5f} | "
                  f"{row['peak']:.0f} |", flush=True)


def amp_step(repeats):
    from ichseg.config import preset_config
    from ichseg.models import build_model
    from ichseg.training.losses import DeepSupervisionLoss

    cfg = preset_config("small")
    torch.manual_seed(0)
    model = build_model(cfg).cuda().train()
    loss_fn = DeepSupervisionLoss()
    images = torch.randn(cfg.training.batch_size, cfg.in_channels, *cfg.data.patch_size,
                         device="cuda")
    labels = (torch.rand(cfg.training.batch_size, 1, *cfg.data.patch_size, device="cuda")
              > 0.9).long()
    print("| precision | loss | step s |")
    print("|---|---:|---:|")
    for name, dtype in (("float32", None), ("bf16 autocast", torch.bfloat16)):
        losses = []

        def step(dtype=dtype, losses=losses):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = loss_fn(model(images), labels)
            loss.backward()
            losses.append(float(loss))

        seconds = timed(step, repeats, "cuda")
        finite = all(torch.isfinite(torch.tensor(losses)))
        print(f"| {name} | {losses[-1]:.4f}{'' if finite else ' (NOT finite)'} | "
              f"{seconds:.4f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 4096, 32768])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure here (run this on a GPU machine)")
        return
    if "cuda" not in available_backends():
        print("mamba-ssm does not import: pip install -e '.[cuda]' first")
        return
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}\n")
    agreement_table()
    speed_table(args.lengths, args.repeats)
    print()
    amp_step(args.repeats)


if __name__ == "__main__":
    main()
