"""The `triton` backend of the selective scan: Triton kernels for any CUDA GPU, no compiling.

One program per (batch element, block of `_BLOCK_D` channels) walks the sequence step by step
with the block's (channels x state) state in registers, in float32. The forward stores the state
every `_CHUNK` steps; the backward goes through the chunks last to first, recomputes each one's
states from its checkpoint into a per-program scratch buffer of `_CHUNK + 1` states, then walks
the chunk backwards. Memory is the inputs, outputs and gradients plus L / `_CHUNK` states per
channel: linear in the length, and small.

Deterministic: each program writes only its own elements. Gradients that sum over channels (dB,
dC) go to one partial buffer per block of channels, those that sum over the batch (dA, dD,
d delta_bias) to one per batch element, each summed in a fixed order by torch afterwards.

Triton's `@triton.jit` reads TRITON_INTERPRET when it decorates, that is when this module is
imported: with TRITON_INTERPRET=1 set before that, the kernels run on CPU tensors through
Triton's interpreter (slowly), which is how the tests check them without a GPU.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Whether the kernels below were built for Triton's interpreter (so they take CPU tensors).
# Triton before 3.4 (torch before 2.8, as on some Colab images) has no `knobs` and reads the
# variable directly.
INTERPRETED = (bool(triton.knobs.runtime.interpret) if hasattr(triton, "knobs")
               else os.environ.get("TRITON_INTERPRET", "0") == "1")

# Steps between stored states; the backward's scratch holds _CHUNK + 1 states per program.
_CHUNK = 64
# Channels per program: the grid has batch x channels / _BLOCK_D programs, each sequential over
# the length, so a small block gives the GPU more of them to overlap (a `default`-preset layer
# has 256 channels: 16 programs per batch element).
_BLOCK_D = 16
_NUM_WARPS = 1

# exp(x) = 2**(x log2(e)): A log2(e) is computed once per program.
_LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)


@triton.jit
def _softplus(x):
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)), with log1p(e) = log(w) e / (w - 1) for
    w = 1 + e (Goldberg's correction of the rounding in 1 + e)."""
    e = tl.exp(-tl.abs(x))
    w = 1.0 + e
    log1p = tl.where(w == 1.0, e, tl.log(w) * e / (w - 1.0))
    return tl.maximum(x, 0.0) + log1p


@triton.jit
def _channel_values(ptr, d, dmask, PRESENT: tl.constexpr):
    """D or delta_bias for the block's channels; zeros (which change nothing) if absent."""
    if PRESENT:
        values = tl.load(ptr + d, mask=dmask, other=0.0)
    else:
        values = tl.zeros(d.shape, dtype=tl.float32)
    return values


@triton.jit
def _step_size(delta_ptr, bias_t, off, dmask, SOFTPLUS: tl.constexpr):
    """(pre-activation, dt) of one step for the block's channels."""
    pre = tl.load(delta_ptr + off, mask=dmask, other=0.0) + bias_t
    if SOFTPLUS:
        dt = _softplus(pre)
    else:
        dt = pre
    return pre, dt


@triton.jit
def _forward_kernel(u_ptr, delta_ptr, bias_ptr, a_ptr, b_ptr, c_ptr, d_ptr, z_ptr,
                    out_ptr, last_ptr, checkpoint_ptr,
                    channels, length, state,
                    su_b, su_d, su_t, sb_b, sb_n, sb_t, sc_b, sc_n, sc_t,
                    HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                    SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                    CHUNK: tl.constexpr):
    """u, delta, z and out share u's strides (su_*); B and C have their own. The checkpoints
    are (batch, chunks, channels, state) and last (batch, channels, state), contiguous."""
    b = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dmask = d < channels
    nmask = n < state
    tile = d[:, None] * state + n[None, :]
    tmask = dmask[:, None] & nmask[None, :]
    # Padded channels and state entries read A = 0, u = 0, B = C = 0: their states stay zero.
    a2 = tl.load(a_ptr + tile, mask=tmask, other=0.0) * _LOG2E
    bias_t = _channel_values(bias_ptr, d, dmask, HAS_BIAS)
    d_t = _channel_values(d_ptr, d, dmask, HAS_D)
    h = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
    chunks = tl.cdiv(length, CHUNK)
    for k in range(0, chunks):
        tl.store(checkpoint_ptr + ((b * chunks + k) * channels) * state + tile, h, mask=tmask)
        for t in range(k * CHUNK, tl.minimum(k * CHUNK + CHUNK, length)):
            off = b * su_b + d * su_d + t * su_t
            u_t = tl.load(u_ptr + off, mask=dmask, other=0.0)
            pre, dt = _step_size(delta_ptr, bias_t, off, dmask, SOFTPLUS)
            b_t = tl.load(b_ptr + b * sb_b + n * sb_n + t * sb_t, mask=nmask, other=0.0)
            c_t = tl.load(c_ptr + b * sc_b + n * sc_n + t * sc_t, mask=nmask, other=0.0)
            h = tl.exp2(dt[:, None] * a2) * h + (dt * u_t)[:, None] * b_t[None, :]
            y = tl.sum(h * c_t[None, :], axis=1) + d_t * u_t
            if HAS_Z:
                z_t = tl.load(z_ptr + off, mask=dmask, other=0.0)
                y = y * z_t * tl.sigmoid(z_t)
            tl.store(out_ptr + off, y, mask=dmask)
    tl.store(last_ptr + b * channels * state + tile, h, mask=tmask)


@triton.jit
def _backward_kernel(u_ptr, delta_ptr, bias_ptr, a_ptr, b_ptr, c_ptr, d_ptr, z_ptr,
                     checkpoint_ptr, gout_ptr, glast_ptr, scratch_ptr,
                     du_ptr, ddelta_ptr, dz_ptr, da_ptr, dd_ptr, dbias_ptr, db_ptr, dc_ptr,
                     channels, length, state,
                     su_b, su_d, su_t, sb_b, sb_n, sb_t, sc_b, sc_n, sc_t, sg_b, sg_d, sg_t,
                     HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
                     SOFTPLUS: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                     CHUNK: tl.constexpr):
    """u, delta, z, du, ddelta and dz share u's strides; grad_out has its own (sg_*). Outputs
    per program: dA, dD and d delta_bias for its batch element (batch, channels, ...) in float64,
    dB and dC as its block's share (batch, blocks, state, length). The scratch holds
    CHUNK + 1 states per program: the one before the chunk, then the state after each step."""
    b = tl.program_id(0)
    block = tl.program_id(1)
    blocks = tl.num_programs(1)
    d = block * BLOCK_D + tl.arange(0, BLOCK_D)
    n = tl.arange(0, BLOCK_N)
    dmask = d < channels
    nmask = n < state
    tile = d[:, None] * state + n[None, :]
    tmask = dmask[:, None] & nmask[None, :]
    scratch_tile = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + n[None, :]
    scratch = scratch_ptr + (b * blocks + block) * (CHUNK + 1) * BLOCK_D * BLOCK_N
    a = tl.load(a_ptr + tile, mask=tmask, other=0.0)
    a2 = a * _LOG2E
    bias_t = _channel_values(bias_ptr, d, dmask, HAS_BIAS)
    d_t = _channel_values(d_ptr, d, dmask, HAS_D)
    dh = tl.load(glast_ptr + b * channels * state + tile, mask=tmask, other=0.0)
    da_sum = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float64)
    dd_sum = tl.zeros((BLOCK_D,), dtype=tl.float64)
    dbias_sum = tl.zeros((BLOCK_D,), dtype=tl.float64)
    partial = (b * blocks + block) * state * length
    chunks = tl.cdiv(length, CHUNK)
    for kk in range(0, chunks):
        k = chunks - 1 - kk
        t0 = k * CHUNK
        steps = tl.minimum(CHUNK, length - t0)
        # Recompute the chunk's states, with the arithmetic of the forward.
        h = tl.load(checkpoint_ptr + ((b * chunks + k) * channels) * state + tile, mask=tmask,
                    other=0.0)
        tl.store(scratch + scratch_tile, h)
        for i in range(0, steps):
            off = b * su_b + d * su_d + (t0 + i) * su_t
            u_t = tl.load(u_ptr + off, mask=dmask, other=0.0)
            pre, dt = _step_size(delta_ptr, bias_t, off, dmask, SOFTPLUS)
            b_t = tl.load(b_ptr + b * sb_b + n * sb_n + (t0 + i) * sb_t, mask=nmask, other=0.0)
            h = tl.exp2(dt[:, None] * a2) * h + (dt * u_t)[:, None] * b_t[None, :]
            tl.store(scratch + (i + 1) * BLOCK_D * BLOCK_N + scratch_tile, h)
        # Other threads of the program read these states back below.
        tl.debug_barrier()
        da_chunk = tl.zeros((BLOCK_D, BLOCK_N), dtype=tl.float32)
        dd_chunk = tl.zeros((BLOCK_D,), dtype=tl.float32)
        dbias_chunk = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for j in range(0, steps):
            i = steps - 1 - j
            t = t0 + i
            off = b * su_b + d * su_d + t * su_t
            u_t = tl.load(u_ptr + off, mask=dmask, other=0.0)
            pre, dt = _step_size(delta_ptr, bias_t, off, dmask, SOFTPLUS)
            b_t = tl.load(b_ptr + b * sb_b + n * sb_n + t * sb_t, mask=nmask, other=0.0)
            c_t = tl.load(c_ptr + b * sc_b + n * sc_n + t * sc_t, mask=nmask, other=0.0)
            h_before = tl.load(scratch + i * BLOCK_D * BLOCK_N + scratch_tile)
            h_after = tl.load(scratch + (i + 1) * BLOCK_D * BLOCK_N + scratch_tile)
            decay = tl.exp2(dt[:, None] * a2)
            g = tl.load(gout_ptr + b * sg_b + d * sg_d + t * sg_t, mask=dmask, other=0.0)
            if HAS_Z:
                z_t = tl.load(z_ptr + off, mask=dmask, other=0.0)
                gate = tl.sigmoid(z_t)
                y = tl.sum(h_after * c_t[None, :], axis=1) + d_t * u_t
                tl.store(dz_ptr + off, g * y * gate * (1.0 + z_t * (1.0 - gate)), mask=dmask)
                g = g * z_t * gate
            # dh: dL/dh after step t, from y_t and from the later steps.
            dh = dh + g[:, None] * c_t[None, :]
            scaled_u = dt * u_t
            tl.store(db_ptr + partial + n * length + t,
                     tl.sum(dh * scaled_u[:, None], axis=0), mask=nmask)
            tl.store(dc_ptr + partial + n * length + t,
                     tl.sum(g[:, None] * h_after, axis=0), mask=nmask)
            d_input = tl.sum(dh * b_t[None, :], axis=1)  # dL/d(dt u)
            d_exponent = dh * h_before * decay  # dL/d(dt A)
            da_chunk += d_exponent * dt[:, None]
            d_dt = tl.sum(d_exponent * a, axis=1) + u_t * d_input
            tl.store(du_ptr + off, dt * d_input + g * d_t, mask=dmask)
            if SOFTPLUS:
                d_pre = d_dt * tl.sigmoid(pre)
            else:
                d_pre = d_dt
            tl.store(ddelta_ptr + off, d_pre, mask=dmask)
            dd_chunk += g * u_t
            dbias_chunk += d_pre
            dh = dh * decay
        # Sums over a chunk in float32, over the chunks in float64.
        da_sum += da_chunk.to(tl.float64)
        dd_sum += dd_chunk.to(tl.float64)
        dbias_sum += dbias_chunk.to(tl.float64)
        # The next chunk overwrites the scratch that other threads may still be reading.
        tl.debug_barrier()
    tl.store(da_ptr + b * channels * state + tile, da_sum, mask=tmask)
    tl.store(dd_ptr + b * channels + d, dd_sum, mask=dmask)
    tl.store(dbias_ptr + b * channels + d, dbias_sum, mask=dmask)


class TritonScan(torch.autograd.Function):
    """Forward and backward through the kernels above. Takes float32 tensors (the dispatcher
    converts them); returns (out, last state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        batch, channels, length = u.shape
        state = A.shape[1]
        # u's strides serve delta and z too, and the outputs are allocated like u.
        u = u.contiguous()
        delta = delta.contiguous()
        z = z.contiguous() if z is not None else None
        A = A.contiguous()
        out = torch.empty_like(u)
        last = u.new_empty(batch, channels, state)
        chunks = triton.cdiv(length, _CHUNK)
        checkpoints = u.new_empty(batch, chunks, channels, state)
        _forward_kernel[_grid(batch, channels)](
            u, delta, _or(delta_bias, u), A, B, C, _or(D, u), _or(z, u), out, last,
            checkpoints, channels, length, state, *u.stride(), *B.stride(), *C.stride(),
            **_flags(delta_bias, D, z, delta_softplus, state))
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, checkpoints)
        ctx.delta_softplus = delta_softplus
        return out, last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u, delta, A, B, C, D, z, delta_bias, checkpoints = ctx.saved_tensors
        batch, channels, length = u.shape
        state = A.shape[1]
        grid = _grid(batch, channels)
        flags = _flags(delta_bias, D, z, ctx.delta_softplus, state)
        scratch = u.new_empty(batch * grid[1] * (_CHUNK + 1) * _BLOCK_D * flags["BLOCK_N"])
        du = torch.empty_like(u)
        ddelta = torch.empty_like(u)
        dz = torch.empty_like(u) if z is not None else None
        per_batch = dict(dtype=torch.float64, device=u.device)
        dA = torch.empty(batch, channels, state, **per_batch)
        dD = torch.empty(batch, channels, **per_batch)
        dbias = torch.empty(batch, channels, **per_batch)
        dB = u.new_empty(batch, grid[1], state, length)
        dC = u.new_empty(batch, grid[1], state, length)
        _backward_kernel[grid](
            u, delta, _or(delta_bias, u), A, B, C, _or(D, u), _or(z, u), checkpoints, grad_out,
            grad_last.contiguous(), scratch, du, ddelta, _or(dz, u), dA, dD, dbias, dB, dC,
            channels, length, state, *u.stride(), *B.stride(), *C.stride(),
            *grad_out.stride(), **flags)
        return (du, ddelta, dA.sum(0).float(), _sum_blocks(dB), _sum_blocks(dC),
                dD.sum(0).float() if D is not None else None, dz,
                dbias.sum(0).float() if delta_bias is not None else None, None)


def _grid(batch: int, channels: int) -> tuple[int, int]:
    return batch, triton.cdiv(channels, _BLOCK_D)


def _flags(delta_bias, D, z, delta_softplus, state) -> dict:
    """The kernels' compile-time arguments."""
    return dict(HAS_BIAS=delta_bias is not None, HAS_D=D is not None, HAS_Z=z is not None,
                SOFTPLUS=bool(delta_softplus), BLOCK_D=_BLOCK_D,
                BLOCK_N=triton.next_power_of_2(state), CHUNK=_CHUNK, num_warps=_NUM_WARPS)


def _or(t: torch.Tensor | None, stand_in: torch.Tensor) -> torch.Tensor:
    """An optional tensor, or a stand-in the kernel never reads (its flag is off)."""
    return t if t is not None else stand_in


def _sum_blocks(partial: torch.Tensor) -> torch.Tensor:
    """(batch, blocks, state, length) -> (batch, state, length), summed in float64 in the
    blocks' order."""
    return partial.sum(1, dtype=torch.float64).float()
