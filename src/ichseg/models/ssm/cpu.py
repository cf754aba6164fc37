"""The `cpu` backend of the selective scan: numba kernels behind a custom autograd function.

Parallel over (batch, block of channels), vectorised across the block's channels. The forward
keeps one state every `_CHUNK` steps; the backward recomputes each chunk's states from those
checkpoints instead of storing all L x N of them.
"""

from __future__ import annotations

import os

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic

# numba's default OpenMP threading layer keeps its threads spinning after each parallel scan, and
# they starve torch's own OpenMP threads on the next operations (BatchNorm after a scan measured
# 0.3-1.5 s instead of 0.01-0.02 s on 2 cores). The workqueue layer parks its threads when idle.
# It must be chosen before the first parallel kernel runs; a user's explicit choice is kept.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


# Steps between stored states: the backward recomputes one chunk at a time, so its scratch is
# _CHUNK x N x _BLOCK per thread while the checkpoints cost L / _CHUNK states per channel.
_CHUNK = 64
# Channels per work item. The inner loops run across a block's channels (independent of each
# other, so no reassociation is needed to vectorise them). LLVM vectorises the simple loops
# 8 lanes x 4 unrolled, so shorter loops run their scalar remainder: 16 channels measured 2.6
# against 1.9 ns per element forward for 32; 64 was no faster forward and would waste half of
# each block in the small preset's 32-channel layers.
_BLOCK = 32


# ---------------------------------------------------------------------------------------------
# The cpu backend: autograd function over numba kernels


class CpuScan(torch.autograd.Function):
    """Forward and backward of the scan through the numba kernels below.

    Everything over (batch, channels, length), the softplus of delta included, happens inside
    the kernels: torch's own elementwise ops would each be another pass over memory, run on
    threads of their own. The kernels read every tensor in its own layout.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
        batch, channels, length = u.shape
        state = A.shape[1]
        A_, B_, C_ = _as_numpy(A), _as_numpy(B), _as_numpy(C)
        out = np.empty((batch, channels, length), np.float32)
        last = np.empty((batch, channels, state), np.float32)
        checkpoints = np.empty((batch, -(-channels // _BLOCK), -(-length // _CHUNK), state,
                                _BLOCK), np.float32)
        _forward_kernel(_as_numpy(u), _as_numpy(delta), _channel_values(delta_bias, channels),
                        delta_softplus, A_, B_, C_, _channel_values(D, channels),
                        _gate_values(z), z is not None, out, last, checkpoints)
        ctx.save_for_backward(u, delta, D, z, delta_bias, torch.from_numpy(checkpoints))
        ctx.arrays = (A_, B_, C_)
        ctx.delta_softplus = delta_softplus
        return torch.from_numpy(out), torch.from_numpy(last)

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u, delta, D, z, delta_bias, checkpoints = ctx.saved_tensors
        A_, B_, C_ = ctx.arrays
        batch, channels, length = u.shape
        state = A_.shape[1]
        blocks = checkpoints.shape[1]
        g_out = (_as_numpy(grad_out) if grad_out is not None
                 else np.zeros((batch, channels, length), np.float32))
        g_last = (_as_numpy(grad_last) if grad_last is not None
                  else np.zeros((batch, channels, state), np.float32))
        du = np.empty((batch, channels, length), np.float32)
        ddelta = np.empty((batch, channels, length), np.float32)
        z_ = _gate_values(z)
        dz = np.empty_like(z_)  # scratch the kernel never writes when there is no gate
        # Sums over time, per (batch, channel), in float64; summed over the batch below.
        dA = np.empty((batch, channels, state), np.float64)
        dD = np.empty((batch, channels), np.float64)
        dbias = np.empty((batch, channels), np.float64)
        # dB and dC sum over channels: each block of channels writes its own partial sums.
        dB = np.empty((batch, blocks, state, length), np.float32)
        dC = np.empty((batch, blocks, state, length), np.float32)
        _backward_kernel(_as_numpy(u), _as_numpy(delta), _channel_values(delta_bias, channels),
                         ctx.delta_softplus, A_, B_, C_, _channel_values(D, channels), z_,
                         z is not None, checkpoints.numpy(), g_out, g_last,
                         du, ddelta, dz, dA, dD, dbias, dB, dC)
        return (torch.from_numpy(du), torch.from_numpy(ddelta),
                _float32_tensor(dA.sum(axis=0)),
                _float32_tensor(dB.sum(axis=1, dtype=np.float64)),
                _float32_tensor(dC.sum(axis=1, dtype=np.float64)),
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


def _float32_tensor(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


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
# 1.5 * 2**23 + 127: adding and subtracting it rounds x / ln 2 to a whole k, and the sum holds
# k + 127, the exponent bits of 2**k, in its lowest mantissa bits (see _pow2).
_ROUND_MAGIC = _f32(12583039.0)
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
# exp2 flushes below 2**-126 (float32's smallest normal number) and saturates at 2**127.
_EXP2_LO = _f32(-126.0)
_EXP2_HI = _f32(127.0)
# 2**f on |f| <= 1/2: a degree-6 polynomial fitted for relative error (Lawson's iteration on
# Chebyshev nodes), 1.6e-8 (0.13 ulp) with these float32 coefficients.
_Q1 = _f32(0.6931471824645996)
_Q2 = _f32(0.24022646248340607)
_Q3 = _f32(0.05550328642129898)
_Q4 = _f32(0.009618489071726799)
_Q5 = _f32(0.0013399930903688073)
_Q6 = _f32(0.00015345794963650405)


@intrinsic
def _pow2(typingctx, rounded):
    """2**k from rounded = k + _ROUND_MAGIC for a whole k in [-126, 127]: the low nine bits of
    its mantissa are k + 127, which shifted into the exponent field make 2**k.

    numba has no vectorisable way to reinterpret a float's bits (and this machine has no
    SVML), so the two LLVM instructions are written directly; LLVM then vectorises `_exp32`.
    Reading k from the bits saves the float-to-integer conversion and the bias addition.
    """
    if rounded != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        return builder.bitcast(builder.shl(bits, ir.Constant(i32, 23)), ir.FloatType())

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


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _exp32(x):
    """exp(x) in float32 to within 1 ulp, in plain arithmetic that LLVM can vectorise."""
    xc = min(max(x, _EXP_LO), _EXP_HI)
    rounded = _fma(xc, _LOG2E, _ROUND_MAGIC)
    k = rounded - _ROUND_MAGIC
    r = _fma(k, -_LN2_LO, _fma(k, -_LN2_HI, xc))
    p = _fma(_fma(_fma(_fma(_fma(_P0, r, _P1), r, _P2), r, _P3), r, _P4), r, _P5)
    e = _fma(p, r * r, r + _ONE) * _pow2(rounded)
    return e if x > _EXP_LO else _ZERO


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _exp2_32(x):
    """2**x in float32 to within 1 ulp, for the scan's decays exp(dt A) = 2**(dt A log2(e))
    with A log2(e) computed once per block. Base 2 needs no Cody-Waite reduction (f = x - k is
    exact) and a shorter polynomial: 15 vector operations against _exp32's 18, which the
    scan's decays, one per element, spend most of their time in."""
    xc = min(max(x, _EXP2_LO), _EXP2_HI)
    rounded = xc + _ROUND_MAGIC
    k = rounded - _ROUND_MAGIC
    f = xc - k
    p = _fma(_fma(_fma(_fma(_fma(_fma(_Q6, f, _Q5), f, _Q4), f, _Q3), f, _Q2), f, _Q1), f, _ONE)
    e = p * _pow2(rounded)
    return e if x > _EXP2_LO else _ZERO


@numba.njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _softplus32(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), where log1p(e) = 2 atanh(e / (2 + e))
    is a series in s = e / (2 + e) <= 1/3: seven terms leave an error under 1e-8."""
    e = _exp32(-abs(x))
    s = e / (_TWO + e)
    s2 = s * s
    series = _fma(_fma(_fma(_fma(_fma(_fma(_S13, s2, _S11), s2, _S9), s2, _S7), s2, _S5),
                       s2, _S3), s2, _TWO)
    return max(x, _ZERO) + s * series


@numba.njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _sigmoid32(x):
    return _ONE / (_ONE + _exp32(-x))


@numba.njit(cache=True, fastmath=False, error_model="numpy", inline="always")
def _silu32(x):
    return x * _sigmoid32(x)


# The kernels work on one block of _BLOCK channels of one batch element at a time, _CHUNK steps
# at a time. Inside a chunk everything is laid out as tiles with the channel innermost:
# (step, channel) for per-step values and (step, state, channel) for states and decays, so
# that every inner loop runs over the block's channels, which are independent of each other;
# the state's sums over its N entries then run in order in the loops around them, exactly as
# the reference's. Channels past the last one (in the last block) have zero A, u, z and
# incoming gradients in every tile, so their states and gradients stay zero and are never
# written out.


# The tile transposes below take eight channels at a time, so that each step's eight values
# go to one contiguous stretch of the tile (measured 1.3 against 2.1 ns per value for one
# channel at a time, where every value lands in a different place).


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _gather(tile, rows, c0, t0, m):
    """tile[i, c] = rows[c0 + c, t0 + i] for the block's channels and the chunk's m steps."""
    w = min(tile.shape[1], rows.shape[0] - c0)
    whole = w - w % 8
    for c in range(0, whole, 8):
        r0, r1, r2, r3 = rows[c0 + c], rows[c0 + c + 1], rows[c0 + c + 2], rows[c0 + c + 3]
        r4, r5, r6, r7 = rows[c0 + c + 4], rows[c0 + c + 5], rows[c0 + c + 6], rows[c0 + c + 7]
        for i in range(m):
            t = t0 + i
            row = tile[i]
            row[c], row[c + 1], row[c + 2], row[c + 3] = r0[t], r1[t], r2[t], r3[t]
            row[c + 4], row[c + 5], row[c + 6], row[c + 7] = r4[t], r5[t], r6[t], r7[t]
    for c in range(whole, w):
        source = rows[c0 + c]
        for i in range(m):
            tile[i, c] = source[t0 + i]


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _scatter(rows, tile, c0, t0, m):
    """rows[c0 + c, t0 + i] = tile[i, c], the inverse of _gather."""
    w = min(tile.shape[1], rows.shape[0] - c0)
    whole = w - w % 8
    for c in range(0, whole, 8):
        r0, r1, r2, r3 = rows[c0 + c], rows[c0 + c + 1], rows[c0 + c + 2], rows[c0 + c + 3]
        r4, r5, r6, r7 = rows[c0 + c + 4], rows[c0 + c + 5], rows[c0 + c + 6], rows[c0 + c + 7]
        for i in range(m):
            t = t0 + i
            row = tile[i]
            r0[t], r1[t], r2[t], r3[t] = row[c], row[c + 1], row[c + 2], row[c + 3]
            r4[t], r5[t], r6[t], r7[t] = row[c + 4], row[c + 5], row[c + 6], row[c + 7]
    for c in range(whole, w):
        target = rows[c0 + c]
        for i in range(m):
            target[t0 + i] = tile[i, c]


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _block_columns(values, c0):
    """(state, _BLOCK): the block's rows of a (channels, state) array, transposed, zero-padded."""
    columns = np.zeros((values.shape[1], _BLOCK), np.float32)
    for c in range(min(_BLOCK, values.shape[0] - c0)):
        for n in range(values.shape[1]):
            columns[n, c] = values[c0 + c, n]
    return columns


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _block_values(values, c0):
    """(_BLOCK,): the block's entries of a per-channel vector, zero-padded."""
    block = np.zeros(_BLOCK, np.float32)
    w = min(_BLOCK, values.shape[0] - c0)
    block[:w] = values[c0:c0 + w]
    return block


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _chunk_steps(steps, inputs, delta_t, u_t, bias_t, softplus, m):
    """dt = softplus(delta + bias) (or delta + bias) and the input scale dt * u, per tile entry."""
    for i in range(m):
        step_row = steps[i]
        input_row = inputs[i]
        delta_row = delta_t[i]
        u_row = u_t[i]
        for c in range(step_row.shape[0]):
            pre = delta_row[c] + bias_t[c]
            step = _softplus32(pre) if softplus else pre
            step_row[c] = step
            input_row[c] = step * u_row[c]


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _advance_chunk(states, decays, steps, inputs, a2, B, t0, m):
    """The backward's recomputation of a chunk: from h before the chunk in states[0], write h_i
    to states[i + 1] and exp(dt_i A) to decays[i], for the chunk's m steps (a2 is the block's
    A log2(e) as (state, _BLOCK), B the batch element's (state, length)). The same arithmetic
    as _scan_chunk, so the same states."""
    for i in range(m):
        step_row = steps[i]
        input_row = inputs[i]
        for n in range(a2.shape[0]):
            b = B[n, t0 + i]
            a_row = a2[n]
            before = states[i, n]
            after = states[i + 1, n]
            decay = decays[i, n]
            for c in range(a_row.shape[0]):
                e = _exp2_32(step_row[c] * a_row[c])
                decay[c] = e
                after[c] = _fma(e, before[c], input_row[c] * b)


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _scan_chunk(h, y, steps, inputs, a2, B, C, t0, m):
    """The forward's chunk: advance h (state, _BLOCK) in place through the chunk's m steps
    and write y_i = C_i . h_i (summed over the state in order) to y[i]. The readout shares
    the state update's loop, so each state is read back while still in a register; only the
    backward needs every state and decay kept (measured 0.90 against 1.03 ns per element for
    _advance_chunk and _readout_chunk)."""
    for i in range(m):
        step_row = steps[i]
        input_row = inputs[i]
        y_row = y[i]
        y_row[:] = _ZERO
        for n in range(a2.shape[0]):
            b = B[n, t0 + i]
            cn = C[n, t0 + i]
            a_row = a2[n]
            h_row = h[n]
            for c in range(a_row.shape[0]):
                value = _fma(_exp2_32(step_row[c] * a_row[c]), h_row[c], input_row[c] * b)
                h_row[c] = value
                y_row[c] = _fma(cn, value, y_row[c])


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _readout_chunk(y, states, C, t0, m):
    """y_i = C_i . h_i, summed over the state in order."""
    for i in range(m):
        y_row = y[i]
        y_row[:] = _ZERO
        for n in range(states.shape[1]):
            cn = C[n, t0 + i]
            h = states[i + 1, n]
            for c in range(y_row.shape[0]):
                y_row[c] = _fma(cn, h[c], y_row[c])


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _output_chunk(y, u_t, z_t, D_t, has_z, m):
    """y + D u, gated by SiLU(z) if there is a gate, in place in y."""
    for i in range(m):
        y_row = y[i]
        u_row = u_t[i]
        z_row = z_t[i]
        for c in range(y_row.shape[0]):
            value = _fma(D_t[c], u_row[c], y_row[c])
            y_row[c] = value * _silu32(z_row[c]) if has_z else value


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _forward_block(c0, u, delta, bias, softplus, A, B, C, D, z, has_z, out, last, checkpoints):
    """The scan of channels c0 .. c0 + _BLOCK - 1 of one batch element (every array is that
    element's, checkpoints the block's (chunks, state, _BLOCK) share)."""
    channels, length = u.shape
    state = A.shape[1]
    a2 = _block_columns(A, c0) * _LOG2E
    bias_t = _block_values(bias, c0)
    D_t = _block_values(D, c0)
    h = np.zeros((state, _BLOCK), np.float32)
    u_t = np.zeros((_CHUNK, _BLOCK), np.float32)
    delta_t = np.zeros((_CHUNK, _BLOCK), np.float32)
    z_t = np.zeros((_CHUNK, _BLOCK), np.float32)
    steps = np.empty((_CHUNK, _BLOCK), np.float32)
    inputs = np.empty((_CHUNK, _BLOCK), np.float32)
    y = np.empty((_CHUNK, _BLOCK), np.float32)
    for k in range(checkpoints.shape[0]):
        t0 = k * _CHUNK
        m = min(_CHUNK, length - t0)
        checkpoints[k] = h
        _gather(u_t, u, c0, t0, m)
        _gather(delta_t, delta, c0, t0, m)
        _chunk_steps(steps, inputs, delta_t, u_t, bias_t, softplus, m)
        _scan_chunk(h, y, steps, inputs, a2, B, C, t0, m)
        if has_z:
            _gather(z_t, z, c0, t0, m)
        _output_chunk(y, u_t, z_t, D_t, has_z, m)
        _scatter(out, y, c0, t0, m)
    for c in range(min(_BLOCK, channels - c0)):
        for n in range(state):
            last[c0 + c, n] = h[n, c]


@numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _forward_kernel(u, delta, bias, softplus, A, B, C, D, z, has_z, out, last, checkpoints):
    batch = u.shape[0]
    blocks = checkpoints.shape[1]
    # The loop body is one call: numba's parallel lowering optimised the same code written
    # inline here three times worse than a serially compiled function.
    for item in prange(batch * blocks):
        b = item // blocks
        k = item - b * blocks
        _forward_block(k * _BLOCK, u[b], delta[b], bias, softplus, A, B[b], C[b], D,
                       z[b] if has_z else z[0], has_z, out[b], last[b], checkpoints[b, k])


# The backward of a chunk runs in passes, each a loop nest with at most two arrays written in
# its inner loop: with more, LLVM's run-time overlap checks between the arrays exceed its limit
# and the loop stays scalar (measured: one fused loop ran at 3.3 ns per element, the passes at
# about 0.3-0.5 ns each).


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _gate_backward(g_y, y, u_t, z_t, D_t, m):
    """With y the readout: dL/dz into y, and dL/dy (before the gate) into g_y, which holds
    dL/d(out) on entry."""
    for i in range(m):
        g_row = g_y[i]
        y_row = y[i]
        u_row = u_t[i]
        z_row = z_t[i]
        for c in range(g_row.shape[0]):
            value = _fma(D_t[c], u_row[c], y_row[c])
            gate = _sigmoid32(z_row[c])
            g = g_row[c]
            y_row[c] = g * value * gate * _fma(z_row[c], _ONE - gate, _ONE)
            g_row[c] = g * z_row[c] * gate


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _carry_back(dstates, dh, g_y, decays, C, t0, m):
    """Backwards through the chunk: with dh = dL/dh after its last step on entry, write
    dL/dh_i (from y_i and later steps) to dstates[i]; dh leaves as dL/dh before the chunk."""
    for i in range(m - 1, -1, -1):
        g_row = g_y[i]
        for n in range(dh.shape[0]):
            cn = C[n, t0 + i]
            carried = dh[n]
            total = dstates[i, n]
            decay = decays[i, n]
            for c in range(g_row.shape[0]):
                value = _fma(g_row[c], cn, carried[c])
                total[c] = value
                carried[c] = value * decay[c]


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _decay_grads(dA_chunk, decays, dstates, states, steps, m):
    """Turn decays[i] into dL/d(dt_i A) = dL/dh_i h_{i-1} exp(dt_i A), in place, and sum the
    chunk's dL/dA = sum_i dL/d(dt_i A) dt_i into dA_chunk."""
    dA_chunk[:] = _ZERO
    for i in range(m - 1, -1, -1):
        step_row = steps[i]
        for n in range(dA_chunk.shape[0]):
            before = states[i, n]
            decay = decays[i, n]
            total = dstates[i, n]
            acc = dA_chunk[n]
            for c in range(acc.shape[0]):
                g = total[c] * before[c] * decay[c]
                decay[c] = g
                acc[c] = _fma(g, step_row[c], acc[c])


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _state_sums(s_decay, s_input, d_exponents, dstates, a, B, t0, m):
    """Per step and channel, summed over the state in order: dL/d(dt) through the decays
    (sum_n dL/d(dt A)_n A_n) and dL/d(dt u) through the input term (sum_n dL/dh_n B_n)."""
    for i in range(m):
        decay_row = s_decay[i]
        input_row = s_input[i]
        decay_row[:] = _ZERO
        input_row[:] = _ZERO
        for n in range(a.shape[0]):
            b = B[n, t0 + i]
            a_row = a[n]
            g = d_exponents[i, n]
            total = dstates[i, n]
            for c in range(a_row.shape[0]):
                decay_row[c] = _fma(g[c], a_row[c], decay_row[c])
                input_row[c] = _fma(total[c], b, input_row[c])


@numba.njit(cache=True, fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")
def _dot(x, y):
    """x . y, summed in whatever order LLVM vectorises best: the compiled order is the same on
    every thread, so results still do not depend on the thread count."""
    acc = _ZERO
    for c in range(x.shape[0]):
        acc += x[c] * y[c]
    return acc


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _channel_sums(dB, dC, dstates, inputs, g_y, states, t0, m):
    """The block's shares of dL/dB_i = sum_c dL/dh_i dt u and dL/dC_i = sum_c dL/dy_i h_i."""
    for i in range(m):
        input_row = inputs[i]
        g_row = g_y[i]
        for n in range(dstates.shape[1]):
            dB[n, t0 + i] = _dot(dstates[i, n], input_row)
            dC[n, t0 + i] = _dot(g_row, states[i + 1, n])


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _input_grads(du_t, ddelta_t, g_y, u_t, delta_t, bias_t, D_t, steps, s_decay, s_input,
                 softplus, m):
    """dL/du and dL/d(delta) per tile entry."""
    for i in range(m):
        du_row = du_t[i]
        ddelta_row = ddelta_t[i]
        g_row = g_y[i]
        u_row = u_t[i]
        delta_row = delta_t[i]
        step_row = steps[i]
        decay_row = s_decay[i]
        input_row = s_input[i]
        for c in range(du_row.shape[0]):
            du_row[c] = _fma(g_row[c], D_t[c], step_row[c] * input_row[c])
            d_step = _fma(u_row[c], input_row[c], decay_row[c])
            ddelta_row[c] = (d_step * _sigmoid32(delta_row[c] + bias_t[c]) if softplus
                             else d_step)


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _channel_grads(dD_sum, dbias_sum, g_y, u_t, ddelta_t, m):
    """Add the chunk's dL/dD = sum_i dL/dy_i u_i and dL/d(delta_bias) = sum_i dL/d(delta_i),
    summed in float32 in step order, to the float64 sums."""
    dD_chunk = np.zeros(dD_sum.shape[0], np.float32)
    dbias_chunk = np.zeros(dD_sum.shape[0], np.float32)
    for i in range(m):
        g_row = g_y[i]
        u_row = u_t[i]
        ddelta_row = ddelta_t[i]
        for c in range(dD_chunk.shape[0]):
            dD_chunk[c] = _fma(g_row[c], u_row[c], dD_chunk[c])
            dbias_chunk[c] += ddelta_row[c]
    for c in range(dD_chunk.shape[0]):
        dD_sum[c] += dD_chunk[c]
        dbias_sum[c] += dbias_chunk[c]


@numba.njit(cache=True, fastmath=False, error_model="numpy")
def _backward_block(c0, u, delta, bias, softplus, A, B, C, D, z, has_z, checkpoints, g_out,
                    g_last, du, ddelta, dz, dA, dD, dbias, dB, dC):
    """The backward of channels c0 .. c0 + _BLOCK - 1 of one batch element (every array is
    that element's; checkpoints, dB and dC the block's share). Each chunk's states are
    recomputed from its checkpoint, then the chunk is run backwards."""
    channels, length = u.shape
    state = A.shape[1]
    w = min(_BLOCK, channels - c0)
    a = _block_columns(A, c0)
    a2 = a * _LOG2E
    bias_t = _block_values(bias, c0)
    D_t = _block_values(D, c0)
    dh = _block_columns(g_last, c0)
    states = np.zeros((_CHUNK + 1, state, _BLOCK), np.float32)
    decays = np.empty((_CHUNK, state, _BLOCK), np.float32)
    dstates = np.empty((_CHUNK, state, _BLOCK), np.float32)
    u_t = np.zeros((_CHUNK, _BLOCK), np.float32)
    delta_t = np.zeros((_CHUNK, _BLOCK), np.float32)
    z_t = np.zeros((_CHUNK, _BLOCK), np.float32)
    g_y = np.zeros((_CHUNK, _BLOCK), np.float32)
    steps = np.empty((_CHUNK, _BLOCK), np.float32)
    inputs = np.empty((_CHUNK, _BLOCK), np.float32)
    y = np.empty((_CHUNK, _BLOCK), np.float32)
    s_decay = np.empty((_CHUNK, _BLOCK), np.float32)
    s_input = np.empty((_CHUNK, _BLOCK), np.float32)
    du_t = np.empty((_CHUNK, _BLOCK), np.float32)
    ddelta_t = np.empty((_CHUNK, _BLOCK), np.float32)
    dA_chunk = np.empty((state, _BLOCK), np.float32)
    dA_sum = np.zeros((state, _BLOCK), np.float64)
    dD_sum = np.zeros(_BLOCK, np.float64)
    dbias_sum = np.zeros(_BLOCK, np.float64)
    for k in range(checkpoints.shape[0] - 1, -1, -1):
        t0 = k * _CHUNK
        m = min(_CHUNK, length - t0)
        states[0] = checkpoints[k]
        _gather(u_t, u, c0, t0, m)
        _gather(delta_t, delta, c0, t0, m)
        _chunk_steps(steps, inputs, delta_t, u_t, bias_t, softplus, m)
        _advance_chunk(states, decays, steps, inputs, a2, B, t0, m)
        _gather(g_y, g_out, c0, t0, m)
        if has_z:
            _gather(z_t, z, c0, t0, m)
            _readout_chunk(y, states, C, t0, m)
            _gate_backward(g_y, y, u_t, z_t, D_t, m)
            _scatter(dz, y, c0, t0, m)
        _carry_back(dstates, dh, g_y, decays, C, t0, m)
        _decay_grads(dA_chunk, decays, dstates, states, steps, m)
        _state_sums(s_decay, s_input, decays, dstates, a, B, t0, m)
        _channel_sums(dB, dC, dstates, inputs, g_y, states, t0, m)
        _input_grads(du_t, ddelta_t, g_y, u_t, delta_t, bias_t, D_t, steps, s_decay, s_input,
                     softplus, m)
        _scatter(du, du_t, c0, t0, m)
        _scatter(ddelta, ddelta_t, c0, t0, m)
        _channel_grads(dD_sum, dbias_sum, g_y, u_t, ddelta_t, m)
        dA_sum += dA_chunk
    for c in range(w):
        for n in range(state):
            dA[c0 + c, n] = dA_sum[n, c]
        dD[c0 + c] = dD_sum[c]
        dbias[c0 + c] = dbias_sum[c]


@numba.njit(parallel=True, cache=True, fastmath=False, error_model="numpy")
def _backward_kernel(u, delta, bias, softplus, A, B, C, D, z, has_z, checkpoints, g_out, g_last,
                     du, ddelta, dz, dA, dD, dbias, dB, dC):
    batch = u.shape[0]
    blocks = checkpoints.shape[1]
    for item in prange(batch * blocks):
        b = item // blocks
        k = item - b * blocks
        _backward_block(k * _BLOCK, u[b], delta[b], bias, softplus, A, B[b], C[b], D,
                        z[b] if has_z else z[0], has_z, checkpoints[b, k], g_out[b], g_last[b],
                        du[b], ddelta[b], dz[b] if has_z else dz[0], dA[b], dD[b], dbias[b],
                        dB[b, k], dC[b, k])
