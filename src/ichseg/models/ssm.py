"""The selective scan of Mamba, with mamba-ssm's `selective_scan_fn` signature and meaning.

For every batch b, channel d and step t, in float32 (also under autocast):

    dt_t = softplus(delta_t + delta_bias)            (softplus only if asked)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t  (a vector over the state, h_{-1} = 0)
    y_t  = C_t . h_t + D * u_t
    out  = y * SiLU(z)                               (if z is given)

Backends:
- `reference`: a plain sequential loop in torch, written to be read; the tests' oracle.
- `cpu`: numba kernels behind a custom autograd function, parallel over (batch, channel),
  vectorised over the state. The forward keeps one state every `_CHUNK` steps; the backward
  recomputes each chunk's states from those checkpoints instead of storing all L x N of them.
- `cuda`: mamba-ssm's fused kernel, imported only when asked for.
`auto` picks `cuda` for CUDA tensors when mamba-ssm imports, `cpu` for CPU tensors.
"""

from __future__ import annotations

import functools
import os

import numba
import numpy as np
import torch
import torch.nn.functional as F
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

from ichseg.errors import UsageError

# numba's default OpenMP threading layer keeps its threads spinning after each parallel scan, and
# they starve torch's own OpenMP threads on the next operations (BatchNorm after a scan measured
# 0.3-1.5 s instead of 0.01-0.02 s on 2 cores). The workqueue layer parks its threads when idle.
# It must be chosen before the first parallel kernel runs; a user's explicit choice is kept.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

BACKENDS = ("auto", "reference", "cpu", "cuda")

# Steps between stored states: the backward recomputes one chunk at a time, so its scratch is
# _CHUNK x N per thread while the checkpoints cost L / _CHUNK states per (batch, channel).
_CHUNK = 64
# The state is padded to a multiple of this many lanes (one AVX2 register of float32), so the
# inner loops run whole vectors; padded lanes have A = 0 and B = C = 0 and stay exactly zero.
_LANES = 8
# dB and dC sum over channels; each of this many channel groups owns a partial sum so threads
# never write the same memory, and the grouping does not depend on the thread count, which
# keeps gradients bit-identical on any machine.
_CHANNEL_GROUPS = 8


# ---------------------------------------------------------------------------------------------
# Public entry points


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
        elif name == "cpu":
            result = _CpuScan.apply(*args, delta_softplus, return_last_state)
        else:
            result = scan_reference(*args, delta_softplus=delta_softplus,
                                    return_last_state=True)
    out, last = result if isinstance(result, tuple) else (result, None)
    out = out.to(u.dtype)
    return (out, last) if return_last_state else out


def available_backends() -> tuple[str, ...]:
    """The backends that can run in this process (`cuda` only with a GPU and mamba-ssm)."""
    names = ["reference", "cpu"]
    if torch.cuda.is_available() and _mamba_ssm_scan() is not None:
        names.append("cuda")
    return tuple(names)


def resolve_backend(backend: str, device) -> str:
    """The backend that `backend` (a `model.scan_backend` value) means for tensors on `device`."""
    device = torch.device(device)
    if backend not in BACKENDS:
        raise UsageError(f"model.scan_backend must be one of {', '.join(BACKENDS)}, "
                         f"not {backend!r}.")
    on_cuda = device.type == "cuda"
    if backend == "auto":
        if on_cuda:
            return "cuda" if "cuda" in available_backends() else "reference"
        return "cpu" if device.type == "cpu" else "reference"
    if backend == "cuda" and (not on_cuda or "cuda" not in available_backends()):
        raise UsageError("model.scan_backend 'cuda' needs CUDA tensors and an importable "
                         "mamba-ssm (pip install ichseg[cuda]); use 'auto' or 'cpu' here.")
    if backend == "cpu" and device.type != "cpu":
        raise UsageError(f"model.scan_backend 'cpu' runs on CPU tensors, not on {device.type}; "
                         "use 'auto'.")
    return backend


def scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """The definition, one step at a time in float32: the oracle the fast backends are held to."""
    u, delta, A, B, C = (t.float() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, channels, length = u.shape
    h = u.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta[:, :, t, None] * A)
        h = decay * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.float()[:, None] * u
    if z is not None:
        y = y * F.silu(z.float())
    return (y, h) if return_last_state else y


# ---------------------------------------------------------------------------------------------
# Argument checks and the optional mamba-ssm import


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


@functools.lru_cache(maxsize=1)
def _mamba_ssm_scan():
    """mamba-ssm's `selective_scan_fn`, or None where it does not import (it needs CUDA)."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # ImportError, or a CUDA extension that fails to load
        return None
    return selective_scan_fn


# ---------------------------------------------------------------------------------------------
# The cpu backend: autograd function over numba kernels


class _CpuScan(torch.autograd.Function):
    """Forward and backward of the scan through the numba kernels below.

    Everything over (batch, channels, length), the softplus of delta included, happens inside
    the kernels: torch's own elementwise ops would each be another pass over memory, run on
    threads of their own. B and C go in as (batch, length, state) copies padded to whole
    vectors, so each step reads its state-vector slice contiguously.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        batch, channels, length = u.shape
        state = A.shape[1]
        A_, B_, C_ = _pad_state(A, B, C)
        lanes = A_.shape[1]
        out = np.empty((batch, channels, length), np.float32)
        last = np.empty((batch, channels, lanes), np.float32)
        checkpoints = np.empty((batch, channels, -(-length // _CHUNK), lanes), np.float32)
        _forward_kernel(_as_numpy(u), _as_numpy(delta), _channel_values(delta_bias, channels),
                        delta_softplus, A_, B_, C_, _channel_values(D, channels),
                        _gate_values(z), z is not None, out, last, checkpoints)
        ctx.save_for_backward(u, delta, D, z, delta_bias, torch.from_numpy(checkpoints))
        ctx.padded = (A_, B_, C_)
        ctx.delta_softplus = delta_softplus
        ctx.state = state
        return torch.from_numpy(out), torch.from_numpy(np.ascontiguousarray(last[:, :, :state]))

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u, delta, D, z, delta_bias, checkpoints = ctx.saved_tensors
        A_, B_, C_ = ctx.padded
        batch, channels, length = u.shape
        state = ctx.state
        lanes = A_.shape[1]
        g_out = (_as_numpy(grad_out) if grad_out is not None
                 else np.zeros((batch, channels, length), np.float32))
        g_last = np.zeros((batch, channels, lanes), np.float32)
        if grad_last is not None:
            g_last[:, :, :state] = _as_numpy(grad_last)
        groups = min(_CHANNEL_GROUPS, channels)
        du = np.empty((batch, channels, length), np.float32)
        ddelta = np.empty((batch, channels, length), np.float32)
        z_ = _gate_values(z)
        dz = np.empty_like(z_)  # scratch the kernel never reads when there is no gate
        # Sums over time, per (batch, channel), in float64; summed over the batch below.
        dA = np.empty((batch, channels, lanes), np.float64)
        dD = np.empty((batch, channels), np.float64)
        dbias = np.empty((batch, channels), np.float64)
        dB = np.zeros((batch, groups, length, lanes), np.float32)
        dC = np.zeros((batch, groups, length, lanes), np.float32)
        _backward_kernel(_as_numpy(u), _as_numpy(delta), _channel_values(delta_bias, channels),
                         ctx.delta_softplus, A_, B_, C_, _channel_values(D, channels), z_,
                         z is not None, checkpoints.numpy(), g_out, g_last,
                         du, ddelta, dz, dA, dD, dbias, dB, dC)
        return (torch.from_numpy(du), torch.from_numpy(ddelta),
                _float32_tensor(dA.sum(axis=0)[:, :state]),
                _float32_tensor(_sum_groups(dB, state)), _float32_tensor(_sum_groups(dC, state)),
                _float32_tensor(dD.sum(axis=0)) if D is not None else None,
                torch.from_numpy(dz) if z is not None else None,
                _float32_tensor(dbias.sum(axis=0)) if delta_bias is not None else None,
                None, None)


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 NumPy view (a copy only where the tensor needs one)."""
    return t.detach().float().contiguous().numpy()


def _channel_values(t: torch.Tensor | None, channels: int) -> np.ndarray:
    """D or delta_bias as a float32 array; zeros (which change nothing) where it is absent."""
    return _as_numpy(t) if t is not None else np.zeros(channels, np.float32)


def _gate_values(z: torch.Tensor | None) -> np.ndarray:
    """z as float32, or a stand-in the kernels index but never read when there is no gate."""
    return _as_numpy(z) if z is not None else np.zeros((1, 1, 1), np.float32)


def _sum_groups(partial: np.ndarray, state: int) -> np.ndarray:
    """(batch, groups, length, lanes) partial sums -> (batch, state, length), in float64."""
    return partial.sum(axis=1, dtype=np.float64)[:, :, :state].transpose(0, 2, 1)


def _float32_tensor(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _pad_state(A, B, C):
    """A as (channels, lanes) and B, C as (batch, length, lanes), zero-padded to whole vectors."""
    channels, state = A.shape
    batch, _, length = B.shape
    lanes = -(-state // _LANES) * _LANES
    A_ = np.zeros((channels, lanes), np.float32)
    A_[:, :state] = _as_numpy(A)
    B_ = np.zeros((batch, length, lanes), np.float32)
    B_[:, :, :state] = _as_numpy(B).transpose(0, 2, 1)
    C_ = np.zeros((batch, length, lanes), np.float32)
    C_[:, :, :state] = _as_numpy(C).transpose(0, 2, 1)
    return A_, B_, C_


# ---------------------------------------------------------------------------------------------
# numba kernels. Everything is float32 (constants too, so nothing is promoted to float64) except
# the long sums over time, which are collected in float32 per chunk and added up in float64.

_f32 = np.float32
_LOG2E = _f32(1.4426950408889634)
# ln 2 split so that k * _LN2_HI is exact for the k that occur (Cody and Waite).
_LN2_HI = _f32(0.693359375)
_LN2_LO = _f32(-2.12194440e-4)
# Below this exp() is under float32's smallest normal number; the result is flushed to zero.
_EXP_LO = _f32(-87.33654)
_EXP_HI = _f32(88.0)
_ROUND_MAGIC = _f32(12582912.0)  # 1.5 * 2**23: adding and subtracting it rounds to an integer
_ONE = _f32(1.0)
_TWO = _f32(2.0)
_ZERO = _f32(0.0)
# Minimax polynomial for (exp(r) - 1 - r) / r**2 on |r| <= ln(2)/2 (Cephes' expf).
_P0 = _f32(1.9875691500e-4)
_P1 = _f32(1.3981999507e-3)
_P2 = _f32(8.3334519073e-3)
_P3 = _f32(4.1665795894e-2)
_P4 = _f32(1.6666665459e-1)
_P5 = _f32(5.0000001201e-1)
# 2 / (2k + 1): the series of 2 atanh(s) / s in s**2, for the softplus.
_S3, _S5, _S7, _S9, _S11, _S13 = (_f32(2.0 / k) for k in (3, 5, 7, 9, 11, 13))


@intrinsic
def _pow2(typingctx, k):
    """2**k for a whole-number float32 k in [-126, 127], built from the exponent bits.

    numba has no vectorisable way to reinterpret an integer as a float (and this machine has no
    SVML), so the few LLVM instructions are written directly; LLVM then vectorises `_exp32`.
    """
    if k != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        exponent = builder.add(builder.fptosi(args[0], i32), ir.Constant(i32, 127))
        return builder.bitcast(builder.shl(exponent, ir.Constant(i32, 23)), ir.FloatType())

    return types.float32(types.float32), codegen


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c rounded once. Explicit, because fastmath=False forbids LLVM to fuse by itself;
    the result is the same on every machine with FMA (all x86-64 since 2013, all ARM64)."""
    if not (a == b == c == types.float32):
        return None

    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@numba.njit(cache=True, fastmath=False)
def _exp32(x):
    """exp(x) in float32 to within 1 ulp, in plain arithmetic that LLVM can vectorise."""
    xc = min(max(x, _EXP_LO), _EXP_HI)
    k = _fma(xc, _LOG2E, _ROUND_MAGIC) - _ROUND_MAGIC
    r = _fma(k, -_LN2_LO, _fma(k, -_LN2_HI, xc))
    p = _fma(_fma(_fma(_fma(_fma(_P0, r, _P1), r, _P2), r, _P3), r, _P4), r, _P5)
    e = _fma(p, r * r, r + _ONE) * _pow2(k)
    return e if x > _EXP_LO else _ZERO


@numba.njit(cache=True, fastmath=False, inline="always")
def _softplus32(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), where log1p(e) = 2 atanh(e / (2 + e))
    is a series in s = e / (2 + e) <= 1/3: seven terms leave an error under 1e-8."""
    e = _exp32(-abs(x))
    s = e / (_TWO + e)
    s2 = s * s
    series = _fma(_fma(_fma(_fma(_fma(_fma(_S13, s2, _S11), s2, _S9), s2, _S7), s2, _S5),
                       s2, _S3), s2, _TWO)
    return max(x, _ZERO) + s * series


@numba.njit(cache=True, fastmath=False, inline="always")
def _sigmoid32(x):
    return _ONE / (_ONE + _exp32(-x))


@numba.njit(cache=True, fastmath=False, inline="always")
def _silu32(x):
    return x * _sigmoid32(x)


@numba.njit(cache=True, fastmath=False, inline="always")
def _step_sizes(steps, delta, bias, softplus):
    """dt = softplus(delta + bias), or delta + bias, for one chunk of one (batch, channel)."""
    for i in range(steps.shape[0]):
        pre = delta[i] + bias
        steps[i] = _softplus32(pre) if softplus else pre


@numba.njit(cache=True, fastmath=False, inline="always")
def _advance_chunk(states, decays, steps, u, B, a):
    """One chunk of one (batch, channel), all arrays chunk-local: from h before the chunk in
    states[0], write h_i to states[i + 1] and exp(dt_i * A) to decays[i]. One vector loop a step."""
    lanes = a.shape[0]
    for i in range(steps.shape[0]):
        step = steps[i]
        step_x = step * u[i]
        bt = B[i]
        before = states[i]
        after = states[i + 1]
        decay = decays[i]
        for n in range(lanes):
            e = _exp32(step * a[n])
            decay[n] = e
            after[n] = _fma(e, before[n], step_x * bt[n])


@numba.njit(cache=True, fastmath=False, inline="always")
def _readout_chunk(y, states, C):
    """y[i] = C_i . h_i for one chunk. Each sum runs in a fixed order (no reassociation), but the
    sums of different steps are independent, so they overlap in the CPU instead of stalling."""
    lanes = states.shape[1]
    for i in range(y.shape[0]):
        ct = C[i]
        h = states[i + 1]
        acc = _ZERO
        for n in range(lanes):
            acc = _fma(ct[n], h[n], acc)
        y[i] = acc


@numba.njit(cache=True, fastmath=False)
def _forward_channel(u, delta, bias, softplus, a, B, C, D, z, has_z, out, last, checkpoints):
    """The scan of one (batch, channel): u, delta, z, out are its rows, B and C its batch's."""
    length = u.shape[0]
    lanes = a.shape[0]
    states = np.zeros((_CHUNK + 1, lanes), np.float32)
    decays = np.empty((_CHUNK, lanes), np.float32)
    steps = np.empty(_CHUNK, np.float32)
    y = np.empty(_CHUNK, np.float32)
    for c in range(checkpoints.shape[0]):
        t0 = c * _CHUNK
        t1 = min(t0 + _CHUNK, length)
        m = t1 - t0
        checkpoints[c, :] = states[0]
        _step_sizes(steps[:m], delta[t0:t1], bias, softplus)
        _advance_chunk(states, decays, steps[:m], u[t0:t1], B[t0:t1], a)
        _readout_chunk(y[:m], states, C[t0:t1])
        for i in range(m):  # elementwise over the chunk, so it vectorises, gate's exp included
            value = _fma(D, u[t0 + i], y[i])
            out[t0 + i] = value * _silu32(z[t0 + i]) if has_z else value
        states[0, :] = states[m]
    last[:] = states[0]


@numba.njit(parallel=True, cache=True, fastmath=False)
def _forward_kernel(u, delta, bias, softplus, A, B, C, D, z, has_z, out, last, checkpoints):
    batch, channels, _ = u.shape
    # The loop body is one call: numba's parallel lowering optimised the same code written
    # inline here three times worse than this serially compiled function.
    for item in prange(batch * channels):
        b = item // channels
        d = item - b * channels
        _forward_channel(u[b, d], delta[b, d], bias[d], softplus, A[d], B[b], C[b], D[d],
                         z[b, d] if has_z else z[0, 0], has_z, out[b, d], last[b, d],
                         checkpoints[b, d])


@numba.njit(cache=True, fastmath=False)
def _backward_group(g, groups, u, delta, bias, softplus, A, B, C, D, z, has_z, checkpoints,
                    g_out, g_last, du, ddelta, dz, dA, dD, dbias, dB, dC):
    """The backward of channels g, g + groups, ... of one batch element (every array is that
    element's); their shares of dB and dC are added into this group's partial sums dB, dC."""
    channels, length = u.shape
    lanes = A.shape[1]
    chunks = checkpoints.shape[1]
    states = np.empty((_CHUNK + 1, lanes), np.float32)
    decays = np.empty((_CHUNK, lanes), np.float32)
    steps = np.empty(_CHUNK, np.float32)
    g_y = np.empty(_CHUNK, np.float32)  # dL/dy, y before the gate
    # Per step, dL/d(dt) through the decays and dL/d(dt u) through B, summed over the state.
    s_decay = np.empty(_CHUNK, np.float32)
    s_input = np.empty(_CHUNK, np.float32)
    dh = np.empty(lanes, np.float32)
    dA_chunk = np.empty(lanes, np.float32)
    dA_sum = np.empty(lanes, np.float64)
    for d in range(g, channels, groups):
        a = A[d]
        dh[:] = g_last[d]
        dA_sum[:] = 0.0
        dD_sum = 0.0
        dbias_sum = 0.0
        for c in range(chunks - 1, -1, -1):
            t0 = c * _CHUNK
            t1 = min(t0 + _CHUNK, length)
            m = t1 - t0
            states[0, :] = checkpoints[d, c]
            _step_sizes(steps[:m], delta[d, t0:t1], bias[d], softplus)
            _advance_chunk(states, decays, steps[:m], u[d, t0:t1], B[t0:t1], a)
            if has_z:
                _readout_chunk(g_y[:m], states, C[t0:t1])
                for i in range(m):
                    t = t0 + i
                    y = _fma(D[d], u[d, t], g_y[i])
                    gate = _sigmoid32(z[d, t])
                    dz[d, t] = g_out[d, t] * y * gate * _fma(z[d, t], _ONE - gate, _ONE)
                    g_y[i] = g_out[d, t] * z[d, t] * gate
            else:
                g_y[:m] = g_out[d, t0:t1]
            # Backwards through the chunk; on entry to step t, dh = dL/dh_t from later steps.
            dA_chunk[:] = 0.0
            for i in range(m - 1, -1, -1):
                step = steps[i]
                step_x = step * u[d, t0 + i]
                gy = g_y[i]
                bt = B[t0 + i]
                ct = C[t0 + i]
                dBt = dB[t0 + i]
                dCt = dC[t0 + i]
                before = states[i]
                after = states[i + 1]
                decay = decays[i]
                total_decay = _ZERO
                total_input = _ZERO
                for n in range(lanes):
                    dhn = _fma(gy, ct[n], dh[n])
                    dCt[n] = _fma(gy, after[n], dCt[n])
                    d_exponent = dhn * before[n] * decay[n]
                    dA_chunk[n] = _fma(d_exponent, step, dA_chunk[n])
                    total_decay = _fma(d_exponent, a[n], total_decay)
                    dBt[n] = _fma(dhn, step_x, dBt[n])
                    total_input = _fma(dhn, bt[n], total_input)
                    dh[n] = dhn * decay[n]
                s_decay[i] = total_decay
                s_input[i] = total_input
            for i in range(m):  # elementwise, so it vectorises
                t = t0 + i
                du[d, t] = _fma(g_y[i], D[d], steps[i] * s_input[i])
                d_step = _fma(u[d, t], s_input[i], s_decay[i])
                ddelta[d, t] = d_step * _sigmoid32(delta[d, t] + bias[d]) if softplus else d_step
            dD_chunk = _ZERO
            dbias_chunk = _ZERO
            for i in range(m):
                dD_chunk = _fma(g_y[i], u[d, t0 + i], dD_chunk)
                dbias_chunk += ddelta[d, t0 + i]
            for n in range(lanes):
                dA_sum[n] += dA_chunk[n]
            dD_sum += dD_chunk
            dbias_sum += dbias_chunk
        dA[d, :] = dA_sum
        dD[d] = dD_sum
        dbias[d] = dbias_sum


@numba.njit(parallel=True, cache=True, fastmath=False)
def _backward_kernel(u, delta, bias, softplus, A, B, C, D, z, has_z, checkpoints, g_out, g_last,
                     du, ddelta, dz, dA, dD, dbias, dB, dC):
    batch = u.shape[0]
    groups = dB.shape[1]
    for item in prange(batch * groups):
        b = item // groups
        g = item - b * groups
        _backward_group(g, groups, u[b], delta[b], bias, softplus, A, B[b], C[b], D,
                        z[b] if has_z else z[0], has_z, checkpoints[b], g_out[b], g_last[b],
                        du[b], ddelta[b], dz[b] if has_z else dz[0], dA[b], dD[b], dbias[b],
                        dB[b, g], dC[b, g])
