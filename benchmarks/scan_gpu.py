"""The GPU check of the selective scan and of a training step, prepared for a CUDA machine:

    python benchmarks/scan_gpu.py [--lengths 512 4096 32768 73728] [--repeats 5]
                                  [--reference-up-to 4096]

`triton` (this package's Triton kernels, needs only `triton`, which CUDA builds of PyTorch
bring) against `cuda` (mamba-ssm's kernel, timed where `pip install -e '.[cuda]'` made it
importable) and the `reference` loop. Without a CUDA device it says so and exits 0, so that it
can sit in the tree of a CPU-only project. Prints markdown tables, which BENCHMARKS.md quotes
with the command.

1. Agreement: on random inputs of several shapes, with and without z, D and delta_bias, the
   output, the last state and every gradient of each fast backend against `reference` (all on the
   GPU, float32), as the norm-wise relative error; and each under bfloat16 autocast against
   itself without (the scan always runs in float32, so they must agree to float32 rounding).
2. Speed: forward and forward+backward medians and peak GPU memory, batch 1, 128 channels,
   state 16 (benchmarks/scan.py's shapes), at each length. The goal: `triton` within 2x of
   `cuda` forward+backward at 32,768 tokens. `reference` only up to --reference-up-to tokens:
   beyond, one call takes minutes.
3. Training step: one optimizer-free forward+backward of the `default` preset's nnMamba and of
   the DynUNet of the same size, in float32 and under bf16 autocast, with cuDNN's autotuner
   (the default) and with `training.deterministic` on. The goal: nnMamba no slower than 1.5x
   DynUNet.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ichseg.models.ssm import available_backends, selective_scan
from ichseg.training.device_setup import configure_device

AGREEMENT_SHAPES = [  # (batch, channels, state, length)
    (1, 8, 4, 1), (2, 16, 16, 64), (2, 64, 16, 1000), (1, 130, 8, 513)]
ORDER = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
FAST = ("triton", "cuda")


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


def agreement_table(fast):
    print("| batch, channels, state, length | options | "
          + " | ".join(f"{b} vs reference | {b} bf16 autocast vs float32" for b in fast) + " |")
    print("|---|---|" + "---:|---:|" * len(fast))
    worst_all = dict.fromkeys(fast, 0.0)
    for seed, shape in enumerate(AGREEMENT_SHAPES):
        for options in (("D", "z", "delta_bias"), ()):
            inputs = random_inputs(*shape, options, "cuda", seed)
            reference = run_scan(inputs, "reference")
            cells = []
            for backend in fast:
                result = run_scan(inputs, backend)
                worst = max(relative_error(g, w) for g, w in zip(result, reference, strict=True))
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    autocast = run_scan(inputs, backend)
                drift = max(relative_error(a, f) for a, f in zip(autocast, result, strict=True))
                worst_all[backend] = max(worst_all[backend], worst)
                cells += [f"{worst:.1e}", f"{drift:.1e}"]
            print(f"| {', '.join(map(str, shape))} | {'+'.join(options) or 'none'} | "
                  f"{' | '.join(cells)} |", flush=True)
    for backend, worst in worst_all.items():
        print(f"\nworst {backend}-vs-reference error {worst:.1e} (the CPU tests hold 1e-5)")
    print()


def timed(fn, repeats):
    times = []
    for _ in range(repeats + 1):  # the first call warms up (Triton compiles, cuDNN tunes)
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def speed_table(backends, lengths, repeats, reference_up_to):
    print("| tokens | pass | " + " | ".join(f"{b} s | {b} peak MiB" for b in backends) + " |")
    print("|---|---|" + "---:|---:|" * len(backends))
    for length in lengths:
        for backward in (False, True):
            cells = []
            for backend in backends:
                if backend == "reference" and length > reference_up_to:
                    cells += ["-", "-"]
                    continue
                inputs = random_inputs(1, 128, 16, length, ORDER, "cuda", seed=length)
                leaves = [inputs[k] for k in ORDER]

                def once(leaves=leaves, backend=backend, backward=backward):
                    with torch.set_grad_enabled(backward):
                        out = selective_scan(*leaves, delta_softplus=True, backend=backend)
                        if backward:
                            torch.autograd.grad(out, leaves, torch.ones_like(out))

                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                seconds = timed(once, repeats)
                cells += [f"{seconds:.5f}", f"{torch.cuda.max_memory_allocated() / 2**20:.0f}"]
            print(f"| {length:,} | {'forward+backward' if backward else 'forward'} | "
                  f"{' | '.join(cells)} |", flush=True)
    print()


def step_table(repeats):
    from ichseg.config import preset_config
    from ichseg.models import build_model
    from ichseg.models.ssm import resolve_backend
    from ichseg.training.losses import DeepSupervisionLoss

    print(f"scan backend of the step: {resolve_backend('auto', 'cuda')}\n")
    print("| network | precision | switches | loss | step s | peak MiB |")
    print("|---|---|---|---:|---:|---:|")
    loss_fn = DeepSupervisionLoss()
    for name in ("nnmamba", "dynunet"):
        cfg = preset_config("default")
        cfg.model.name = name
        images = torch.randn(cfg.training.batch_size, cfg.in_channels, *cfg.data.patch_size,
                             device="cuda")
        labels = (torch.rand(cfg.training.batch_size, 1, *cfg.data.patch_size, device="cuda")
                  > 0.9).long()
        for deterministic in (False, True):
            configure_device(torch.device("cuda"), deterministic)
            torch.manual_seed(0)
            model = build_model(cfg).cuda().train()
            for precision, dtype in (("float32", None), ("bf16 autocast", torch.bfloat16)):
                losses = []

                def step(model=model, dtype=dtype, losses=losses, images=images, labels=labels):
                    model.zero_grad(set_to_none=True)
                    with torch.autocast("cuda", dtype=dtype or torch.float32,
                                        enabled=dtype is not None):
                        loss = loss_fn(model(images), labels)
                    loss.backward()
                    losses.append(float(loss))

                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                seconds = timed(step, repeats)
                finite = all(torch.isfinite(torch.tensor(losses)))
                switches = "deterministic" if deterministic else "cudnn.benchmark"
                print(f"| {name} | {precision} | {switches} | {losses[-1]:.4f}"
                      f"{'' if finite else ' (NOT finite)'} | {seconds:.4f} | "
                      f"{torch.cuda.max_memory_allocated() / 2**20:.0f} |", flush=True)
            del model
    configure_device(torch.device("cuda"), False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 4096, 32768, 73728])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-up-to", type=int, default=4096,
                        help="longest sequence the reference loop is timed at")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure here (run this on a GPU machine)")
        return
    fast = tuple(b for b in FAST if b in available_backends())
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, fast backends: "
          f"{', '.join(fast) or 'none (pip install triton, or mamba-ssm)'}\n")
    if fast:
        agreement_table(fast)
    speed_table((*fast, "reference"), args.lengths, args.repeats, args.reference_up_to)
    step_table(args.repeats)


if __name__ == "__main__":
    main()
