"""`selective_scan`: argument checks, and which backend runs for which device."""

from __future__ import annotations

import functools
import warnings

import torch

from ichseg.errors import UsageError
from ichseg.models.ssm.cpu import CpuScan
from ichseg.models.ssm.optional import optional_attribute
from ichseg.models.ssm.reference import scan_reference

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")

REFERENCE_ON_GPU = (
    "the selective scan runs the `reference` backend on {device}: a Python loop that launches "
    "several kernels per token and keeps every step's state for autograd, so a `default`-preset "
    "training step (73,728 tokens per scan in its first Mamba stage) takes minutes and "
    "gigabytes instead of a fraction of a second. Install triton (it comes with CUDA builds of "
    "PyTorch) for the `triton` backend, or mamba-ssm for `cuda`.")


class SlowScanWarning(UserWarning):
    """The selective scan runs the `reference` loop on a GPU."""


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend="auto"):
    """Run the selective scan; returns `out` (batch, channels, length) in u's dtype, and with
    `return_last_state` the pair `(out, last_state (batch, channels, state))` in float32."""
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device)
    with torch.autocast(device_type=u.device.type, enabled=False):
        args = [None if t is None else t.float() for t in (u, delta, A, B, C, D, z, delta_bias)]
        if name == "cuda":
            result = _mamba_ssm_scan()(*args, delta_softplus=delta_softplus,
                                       return_last_state=return_last_state)
        elif name == "triton":
            result = _triton_scan().TritonScan.apply(*args, delta_softplus)
        elif name == "cpu":
            result = CpuScan.apply(*args, delta_softplus, return_last_state)
        else:
            result = scan_reference(*args, delta_softplus=delta_softplus,
                                    return_last_state=True)
    out, last = result if isinstance(result, tuple) else (result, None)
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out


def available_backends() -> tuple[str, ...]:
    """The backends that can run in this process: `triton` where Triton imports and there is a
    CUDA device (or its interpreter runs kernels on the CPU), `cuda` with a GPU and mamba-ssm."""
    names = ["reference", "cpu"]
    triton = _triton_scan()
    if triton is not None and (_cuda_available() or triton.INTERPRETED):
        names.append("triton")
    if _cuda_available() and _mamba_ssm_scan() is not None:
        names.append("cuda")
    return tuple(names)


def resolve_backend(backend: str, device) -> str:
    """The backend that `backend` (a `model.scan_backend` value) means for tensors on `device`.

    `auto`: `cpu` on the CPU; on CUDA mamba-ssm's kernel where it imports, else `triton`, else
    `reference` (`triton` first under torch's deterministic algorithms). The `reference` loop on a GPU, chosen or fallen back to, warns (SlowScanWarning)
    with what it costs.
    """
    device = torch.device(device)
    if backend not in BACKENDS:
        raise UsageError(f"model.scan_backend must be one of {', '.join(BACKENDS)}, "
                         f"not {backend!r}.")
    if backend == "auto":
        if device.type == "cpu":
            return "cpu"
        available = available_backends() if device.type == "cuda" else ()
        # mamba-ssm's backward sums gradients with atomic additions, in an order that changes
        # from run to run; `triton`'s does not.
        preferred = (("triton", "cuda") if torch.are_deterministic_algorithms_enabled()
                     else ("cuda", "triton"))
        backend = next((name for name in preferred if name in available), "reference")
    if backend == "cuda" and (device.type != "cuda" or "cuda" not in available_backends()):
        raise UsageError("model.scan_backend 'cuda' needs CUDA tensors and an importable "
                         "mamba-ssm (pip install ichseg[cuda]); use 'auto' or 'triton' here.")
    if backend == "triton" and not _triton_runs_on(device):
        raise UsageError(f"model.scan_backend 'triton' needs an importable triton and CUDA "
                         f"tensors, not {device.type} ones (on the CPU only under "
                         f"TRITON_INTERPRET=1); use 'auto'.")
    if backend == "cpu" and device.type != "cpu":
        raise UsageError(f"model.scan_backend 'cpu' runs on CPU tensors, not on {device.type}; "
                         "use 'auto'.")
    if backend == "reference" and device.type != "cpu":
        warnings.warn(REFERENCE_ON_GPU.format(device=device.type), SlowScanWarning,
                      stacklevel=2)
    return backend


def _triton_runs_on(device: torch.device) -> bool:
    triton = _triton_scan()
    if triton is None:
        return False
    if device.type == "cuda":
        return _cuda_available()
    return device.type == "cpu" and triton.INTERPRETED


# ---------------------------------------------------------------------------------------------
# Argument checks and the optional imports; the tests replace the three functions below to
# fake what a machine has.


def _cuda_available() -> bool:
    return torch.cuda.is_available()


@functools.lru_cache(maxsize=1)
def _mamba_ssm_scan():
    """mamba-ssm's `selective_scan_fn`, or None where it does not import (it needs CUDA)."""
    return optional_attribute("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")


@functools.lru_cache(maxsize=1)
def _triton_scan():
    """The module of the `triton` backend, or None where triton does not import. Imported on
    first use only: importing triton takes a second, and most CPU runs never need it."""
    try:
        from ichseg.models.ssm import triton_scan
    except ImportError:
        return None
    return triton_scan


def _check_shapes(u, delta, A, B, C, D, z, delta_bias):
    """UsageError naming the argument whose shape does not fit mamba-ssm's convention."""
    if u.dim() != 3:
        raise UsageError(f"selective_scan: u must be (batch, channels, length), got shape "
                         f"{tuple(u.shape)}.")
    batch, channels, length = u.shape
    if length == 0:
        raise UsageError("selective_scan: u must have at least one step (length 0 given).")
    if delta.shape != u.shape:
        raise UsageError(f"selective_scan: delta must have u's shape {tuple(u.shape)}, got "
                         f"{tuple(delta.shape)}.")
    if A.dim() != 2 or A.shape[0] != channels or A.is_complex():
        raise UsageError(f"selective_scan: A must be a real (channels={channels}, state) "
                         f"tensor, got shape {tuple(A.shape)}.")
    state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() != 3:
            raise UsageError(f"selective_scan: {name} must be (batch, state, length); the "
                             f"time-invariant and grouped forms are not supported, got shape "
                             f"{tuple(t.shape)}.")
        if tuple(t.shape) != (batch, state, length):
            raise UsageError(f"selective_scan: {name} must have shape "
                             f"{(batch, state, length)}, got {tuple(t.shape)}.")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (channels,):
            raise UsageError(f"selective_scan: {name} must have shape ({channels},), got "
                             f"{tuple(t.shape)}.")
    if z is not None and z.shape != u.shape:
        raise UsageError(f"selective_scan: z must have u's shape {tuple(u.shape)}, got "
                         f"{tuple(z.shape)}.")
    devices = {t.device for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None}
    if len(devices) > 1:
        raise UsageError(f"selective_scan: all tensors must be on one device, got "
                         f"{sorted(str(d) for d in devices)}.")
