"""Selective-scan benchmark: the numba `cpu` backend against a well-written sequential torch loop,
and against the floor of the arithmetic the scan cannot avoid, at this CPU's measured rates.

    python benchmarks/scan.py [--lengths 512 4096 32768] [--repeats 5]

Prints one markdown table (the figures in BENCHMARKS.md come from it). Times are wall-clock
medians, the torch loop's and the cpu backend's runs taken in turn; other processes share the
cores, so the ratios, measured side by side in one run, are the figures to read, and the load
average is printed before and after. Peak memory is the growth of the process's resident set (VmHWM, reset
through /proc/self/clear_refs) over its size just before the call, in a fresh process after one
warm-up call, with glibc told to return large blocks at once (Linux with glibc only).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import prange

from ichseg.models.ssm import selective_scan
from ichseg.models.ssm.cpu import _exp2_32, _fma

BATCH, CHANNELS, STATE = 1, 128, 16


# --- the baseline -------------------------------------------------------------------------------

def sequential_torch_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True):
    """The scan as a Python loop written well: every decay exp(dt A) and input term dt B u is
    computed once for all steps, laid out (length, batch, channels, state) so that each step's
    slice is one contiguous block, and split into per-step views up front; each step is then one
    fused torch call through a local name, and the readout one batched product at the end.

    The layout matters: built as (batch, channels, length, state) the per-step views are strided
    by length x state, and the same loop took 1.7 s instead of 0.26 s at 32,768 steps here.
    """
    dt = delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    dt = dt.permute(2, 0, 1).contiguous()  # (length, batch, channels)
    decays = torch.exp(dt.unsqueeze(-1) * A).unbind(0)
    drives = ((dt * u.permute(2, 0, 1)).unsqueeze(-1)
              * B.permute(2, 0, 1).unsqueeze(2)).unbind(0)
    addcmul = torch.addcmul
    h = drives[0]  # the state starts at zero, so h_0 is the first input term alone
    states = [h]
    append = states.append
    for decay, drive in zip(decays[1:], drives[1:], strict=True):
        h = addcmul(drive, decay, h)
        append(h)
    y = torch.einsum("lbdn,bnl->bdl", torch.stack(states), C)
    return (y + D[:, None] * u) * F.silu(z)


def cpu_scan(u, delta, A, B, C, D, z, delta_bias):
    return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True,
                          backend="cpu")


# --- measurement helpers ------------------------------------------------------------------------

def make_inputs(length, requires_grad, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = dict(u=(BATCH, CHANNELS, length), delta=(BATCH, CHANNELS, length),
                  B=(BATCH, STATE, length), C=(BATCH, STATE, length), D=(CHANNELS,),
                  z=(BATCH, CHANNELS, length), delta_bias=(CHANNELS,))
    inputs = {k: torch.randn(*s, generator=g) for k, s in shapes.items()}
    inputs["delta"] = inputs["delta"] * 0.5 - 2.0
    inputs["A"] = -torch.arange(1, STATE + 1, dtype=torch.float32).repeat(CHANNELS, 1)
    for t in inputs.values():
        t.requires_grad_(requires_grad)
    return inputs


def forward_only(scan, inputs):
    with torch.no_grad():
        scan(**inputs)


def forward_backward(scan, inputs):
    out = scan(**inputs)
    # autograd.grad, not backward(): gradients are returned, not added into .grad from the
    # previous repeat, which would time torch's accumulation as well.
    torch.autograd.grad(out, list(inputs.values()), torch.ones_like(out))


def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternating_medians(first, first_repeats, second, second_repeats):
    """Median seconds of two functions timed in turn (after one warm-up call each), so that a
    change in the machine's load while they run falls on both and not on one of the two."""
    first()
    second()
    first_times, second_times = [], []
    for i in range(max(first_repeats, second_repeats)):
        for fn, times, repeats in ((first, first_times, first_repeats),
                                   (second, second_times, second_repeats)):
            if i < repeats:
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
    return statistics.median(first_times), statistics.median(second_times)


def _status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def peak_memory_mib(fn):
    """Resident-set growth during fn(), in MiB (Linux: VmHWM reset through clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kib("VmRSS:")
    fn()
    return (_status_kib("VmHWM:") - before) / 1024


def peak_memory_in_child(scan_name, length, mode):
    """peak_memory_mib of one call, measured in a fresh process after one warm-up call: in this
    process, memory the allocators kept from earlier runs would hide the growth."""
    command = [sys.executable, __file__, "--memory-of", scan_name, str(length), mode]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout)


def _memory_of(scan_name, length, mode):
    # glibc: serve blocks over 128 KiB by mmap and unmap them when freed (by default the
    # threshold grows after the first large free), so the resident set follows what is live.
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # -3: M_MMAP_THRESHOLD
    scan = {"torch-loop": sequential_torch_scan, "cpu": cpu_scan}[scan_name]
    run = {"forward": forward_only, "forward+backward": forward_backward}[mode]
    inputs = make_inputs(length, requires_grad=mode != "forward")
    run(scan, inputs)
    print(peak_memory_mib(lambda: run(scan, inputs)))


# --- the floor ----------------------------------------------------------------------------------

@numba.njit(parallel=True, fastmath=False)
def _exp_throughput_kernel(x, out, repeats):
    rows = x.shape[0]
    for r in prange(rows):
        xr = x[r]
        outr = out[r]
        for _ in range(repeats):
            for i in range(xr.shape[0]):
                outr[i] = _exp2_32(xr[i])  # the base-2 exp the kernels' decays use


@numba.njit(parallel=True, fastmath=False)
def _fma_throughput_kernel(a, b, h, repeats):
    # Each row holds 16 independent vectors of state, so the FMA units, not latency, bound it.
    rows = h.shape[0]
    for r in prange(rows):
        ar = a[r]
        br = b[r]
        hr = h[r]
        for _ in range(repeats):
            for n in range(hr.shape[0]):
                hr[n] = _fma(ar[n], hr[n], br[n])


def measure_rates():
    """Exps and multiply-adds per second on this CPU now, on arrays that stay in cache (so the
    floor counts arithmetic, not memory traffic), with every available thread where possible."""
    threads = numba.get_num_threads()
    rows, width, repeats = 4 * threads, 1 << 14, 64
    x = -np.random.default_rng(0).random((rows, width), dtype=np.float32) * 10
    y = np.empty_like(x)
    _exp_throughput_kernel(x[:, :64], y[:, :64], 1)
    numba_exp = rows * width * repeats / median_seconds(
        lambda: _exp_throughput_kernel(x, y, repeats), 5)
    numpy_exp = x.size * 8 / median_seconds(lambda: [np.exp(x, out=y) for _ in range(8)], 5)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    torch.set_num_threads(1)  # like numpy's; torch's pool only slows down on shared cores
    torch_exp = x.size * 8 / median_seconds(lambda: [torch.exp(tx, out=ty) for _ in range(8)], 5)
    a = np.full((rows, 128), 0.999, np.float32)
    b = np.full((rows, 128), 1e-3, np.float32)
    h = np.zeros((rows, 128), np.float32)
    _fma_throughput_kernel(a, b, h, 1)
    fma_repeats = 200_000
    fma = rows * 128 * fma_repeats / median_seconds(
        lambda: _fma_throughput_kernel(a, b, h, fma_repeats), 5)
    return dict(numba_exp=numba_exp, numpy_exp=numpy_exp, torch_exp=torch_exp, fma=fma,
                threads=threads)


# Arithmetic per (batch, channel, step, state) element. Forward: exp(dt A), the state update
# and the readout C.h. Backward: the states are recomputed (one exp and one update; storing them
# instead would cost L x N memory), then nine multiply-adds: dh += dy C, dC, dB, dA, the two
# factors of the decay's gradient, the sums into d(dt) and du, and carrying dh back a step.
FLOOR_OPS = {"forward": (1, 2), "forward+backward": (2, 2 + 1 + 9)}


def floor_seconds(length, mode, rates):
    elements = BATCH * CHANNELS * length * STATE
    exps, fmas = FLOOR_OPS[mode]
    best_exp = max(rates["numba_exp"], rates["numpy_exp"], rates["torch_exp"])
    return elements * (exps / best_exp + fmas / rates["fma"])


# --- cold compile -------------------------------------------------------------------------------

def cold_compile_seconds():
    """Seconds to compile the kernels from nothing (an empty numba cache), then to load them."""
    script = textwrap.dedent("""
        import time, torch
        from ichseg.models import selective_scan
        x = [torch.randn(1, 2, 8, requires_grad=True) for _ in range(2)]
        A = -torch.ones(2, 4, requires_grad=True)
        B, C = (torch.randn(1, 4, 8, requires_grad=True) for _ in range(2))
        start = time.perf_counter()
        selective_scan(x[0], x[1], A, B, C, delta_softplus=True, backend="cpu").sum().backward()
        print(time.perf_counter() - start)
    """)
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        run = [sys.executable, "-c", script]
        cold = float(subprocess.run(run, env=env, capture_output=True, text=True,
                                    check=True).stdout)
        warm = float(subprocess.run(run, env=env, capture_output=True, text=True,
                                    check=True).stdout)
    return cold, warm


# --- main -----------------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 4096, 32768])
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs per figure (the torch loop at 32,768 and up gets 3)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="threads for the torch loop (default 1: its per-step ops are too "
                             "small to split, and on cores shared with other jobs torch's "
                             "thread pool slows its few bulk ops down instead of up)")
    parser.add_argument("--memory-of", nargs=3, metavar=("SCAN", "LENGTH", "MODE"),
                        help=argparse.SUPPRESS)  # the child process of peak_memory_in_child
    args = parser.parse_args()
    if args.memory_of:
        scan_name, length, mode = args.memory_of
        _memory_of(scan_name, int(length), mode)
        return

    load_before = os.getloadavg()
    cold, warm = cold_compile_seconds()
    forward_backward(cpu_scan, make_inputs(64, True))  # load the compiled kernels
    rates = measure_rates()
    print(f"batch {BATCH}, channels {CHANNELS}, state {STATE}; torch {torch.__version__}, "
          f"numba {numba.__version__} ({numba.threading_layer()} threading layer), "
          f"{rates['threads']} numba threads, {args.torch_threads} torch thread(s) for the loop")
    print(f"cold compile of the cpu kernels {cold:.1f} s (empty cache), {warm:.2f} s "
          f"from the cache")
    print(f"measured rates: exp {rates['numba_exp'] / 1e9:.2f} G/s (numba's base-2, vectorised, all "
          f"threads), {rates['numpy_exp'] / 1e9:.2f} G/s (numpy), {rates['torch_exp'] / 1e9:.2f}"
          f" G/s (torch), one thread each; float32 multiply-add {rates['fma'] / 1e9:.1f} G/s (numba, all threads)")
    print()
    print("| length | pass | torch loop s | cpu s | speed-up | cpu ns/token | floor s "
          "| cpu / floor | torch loop peak MiB | cpu peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for length in args.lengths:
        for mode, run in (("forward", forward_only), ("forward+backward", forward_backward)):
            print(table_row(length, mode, run, rates, args.repeats, args.torch_threads), flush=True)
    print()
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} "
          "{:.2f}".format(*load_before, *os.getloadavg()))


def table_row(length, mode, run, rates, repeats, torch_threads):
    inputs = make_inputs(length, requires_grad=mode != "forward")
    # Set here, each time: numba's OpenMP threading layer resets the thread count of the
    # OpenMP runtime it shares with torch whenever it starts its own threads.
    torch.set_num_threads(torch_threads)
    loop_s, cpu_s = alternating_medians(lambda: run(sequential_torch_scan, inputs),
                                        3 if length >= 32768 else repeats,
                                        lambda: run(cpu_scan, inputs), repeats)
    loop_mib = peak_memory_in_child("torch-loop", length, mode)
    cpu_mib = peak_memory_in_child("cpu", length, mode)
    floor = floor_seconds(length, mode, rates)
    return (f"| {length:,} | {mode} | {loop_s:.3f} | {cpu_s:.4f} | {loop_s / cpu_s:.1f}x "
            f"| {cpu_s / (BATCH * length) * 1e9:,.0f} | {floor:.4f} | {cpu_s / floor:.1f}x "
            f"| {loop_mib:,.0f} | {cpu_mib:,.1f} |")

if __name__ == "__main__":
    main()
