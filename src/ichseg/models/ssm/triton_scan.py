"""The `triton` backend of the selective scan: Triton kernels for any CUDA GPU, no compiling.

Parallel over the sequence as well as over batch and channels. The tokens are cut into chunks
of T (`triton_plan.TILE_TABLE`: 128 at state 16); one program per (chunk, group of 64 channels,
batch element) scans its chunk with `tl.associative_scan` over (tokens x channels x state) tiles
in float32, a block of channels at a time. The forward is three launches:
  (a) `chunk_ends`: each chunk from a zero state: its end state and its decay prod exp(dt A),
      per channel and state;
  (b) `carry`: the true state entering each chunk, carried across the chunks in order,
      parallel over batch, channels and state, 64 chunks composed by one scan per dependent
      step; and the last state;
  (c) `chunk_outputs`: each chunk again from its incoming state, writing the output.
The backward mirrors it: (a) `chunk_adjoints`, what each chunk's outputs alone send back to the
state before it; (b) `carry` in reverse, the adjoint entering each chunk from the next, starting
from the last state's gradient; (c) `chunk_gradients`, each chunk's states again and its
adjoints from the incoming one, and every gradient.

Numbers, from `triton_plan.launch_plan` (tests/test_ssm_triton.py records the launches): at the
`default` preset's first Mamba stage (batch 8, 128 channels, state 16, 73,728 tokens) every
launch that walks the tokens, forward and backward, has 9,216 programs of 8 warps (73,728
warps; the goal is at least 1,024), and no program covers more than 128 tokens (the goal: at
most 4,096), which it scans in log2(128) = 7 dependent rounds, for each of its 32 blocks of 2
channels in turn. The carry has 512 programs of 4 warps (2,048 warps), each 9 dependent steps
of 64 chunks. The old kernel ran 64 programs of one warp, each walking all 73,728 tokens
(BENCHMARKS.md, "launch census").

Memory beyond inputs, outputs and gradients: (batch, chunks, channels, state) tensors, 1/8 of
u's size each at T = 128 and state 16: per chunk the incoming state and the decay, kept for the
backward, and while a pass runs the chunks' own end states (forward) or the own and incoming
adjoints and dA (backward); dB and dC per group of channels, (batch, groups, state, length),
1/2 of u's size each at 128 channels.

Deterministic: no atomics, each program writes only its own elements, and partial sums
(dA, dD, d delta_bias per batch element and chunk; dB, dC per group of channels) are summed by
torch in float64 in a fixed order. Tile sizes come from a fixed table, never from timing.

Triton's `@triton.jit` reads TRITON_INTERPRET when it decorates, that is when `triton_kernels`
is imported: with TRITON_INTERPRET=1 set before that, the kernels run on CPU tensors through
Triton's interpreter (slowly), which is how the tests check them without a GPU.
"""

from __future__ import annotations

import os

import torch
import triton

from ichseg.models.ssm import triton_kernels
from ichseg.models.ssm.triton_plan import Launch, launch_plan

# Whether the kernels were built for Triton's interpreter (so they take CPU tensors). Triton
# before 3.4 (torch before 2.8, as on some Colab images) has no `knobs` and reads the variable
# directly.
INTERPRETED = (bool(triton.knobs.runtime.interpret) if hasattr(triton, "knobs")
               else os.environ.get("TRITON_INTERPRET", "0") == "1")


class TritonScan(torch.autograd.Function):
    """Forward and backward through the kernels. Takes float32 tensors (the dispatcher converts
    them); returns (out, last state)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        batch, channels, length = u.shape
        state = A.shape[1]
        plan = launch_plan(batch, channels, length, state)
        ends, carry, outputs = plan.forward
        # u's strides serve delta and z too, and the outputs are allocated like u.
        u = u.contiguous()
        delta = delta.contiguous()
        z = z.contiguous() if z is not None else None
        A = A.contiguous()
        out = torch.empty_like(u)
        last = u.new_empty(batch, channels, state)
        own_ends = u.new_empty(batch, plan.chunks, channels, state)
        decays = torch.empty_like(own_ends)
        incoming = torch.empty_like(own_ends)
        tiles = _tile_flags(plan)
        sizes = (channels, length, state, plan.chunks)
        _launch(ends, u, delta, _or(delta_bias, u), A, B, own_ends, decays, *sizes,
                *u.stride(), *B.stride(), HAS_BIAS=delta_bias is not None,
                SOFTPLUS=bool(delta_softplus), **tiles)
        _launch(carry, own_ends, decays, last, incoming, last, plan.chunks, channels * state,
                REVERSE=False, **_carry_flags(plan))
        del own_ends
        _launch(outputs, u, delta, _or(delta_bias, u), A, B, C, _or(D, u), _or(z, u), incoming,
                out, *sizes, *u.stride(), *B.stride(), *C.stride(),
                **_flags(delta_bias, D, z, delta_softplus), **tiles)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, incoming, decays)
        ctx.delta_softplus = delta_softplus
        return out, last

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        u, delta, A, B, C, D, z, delta_bias, incoming, decays = ctx.saved_tensors
        batch, channels, length = u.shape
        state = A.shape[1]
        plan = launch_plan(batch, channels, length, state)
        adjoints_pass, carry, gradients = plan.backward
        tiles = _tile_flags(plan)
        flags = _flags(delta_bias, D, z, ctx.delta_softplus)
        sizes = (channels, length, state, plan.chunks)
        own_adjoints = torch.empty_like(incoming)
        _launch(adjoints_pass, delta, _or(delta_bias, u), A, C, _or(z, u), grad_out,
                own_adjoints, *sizes, *u.stride(), *C.stride(), *grad_out.stride(),
                HAS_BIAS=flags["HAS_BIAS"], HAS_Z=flags["HAS_Z"], SOFTPLUS=flags["SOFTPLUS"],
                **tiles)
        # The adjoint entering each chunk from the next.
        adjoints = torch.empty_like(incoming)
        _launch(carry, own_adjoints, decays, grad_last.contiguous(), adjoints, grad_last,
                plan.chunks, channels * state, REVERSE=True, **_carry_flags(plan))
        del own_adjoints
        du = torch.empty_like(u)
        ddelta = torch.empty_like(u)
        dz = torch.empty_like(u) if z is not None else None
        dA = torch.empty_like(incoming)
        dD = u.new_empty(batch, plan.chunks, channels)
        dbias = torch.empty_like(dD)
        dB = u.new_empty(batch, plan.groups, state, length)
        dC = torch.empty_like(dB)
        _launch(gradients, u, delta, _or(delta_bias, u), A, B, C, _or(D, u), _or(z, u), incoming,
                adjoints, grad_out, du, ddelta, _or(dz, u), dA, dD, dbias, dB, dC, *sizes,
                *u.stride(), *B.stride(), *C.stride(), *grad_out.stride(), **flags, **tiles)
        return (du, ddelta, _sum(dA, (0, 1)), _sum(dB, 1), _sum(dC, 1),
                _sum(dD, (0, 1)) if D is not None else None, dz,
                _sum(dbias, (0, 1)) if delta_bias is not None else None, None)


def _launch(launch: Launch, *args, **constexprs) -> None:
    """Run one planned launch: its kernel, grid and warps from the plan."""
    kernel = getattr(triton_kernels, launch.kernel)
    kernel[launch.grid](*args, num_warps=launch.num_warps, **constexprs)


def _tile_flags(plan) -> dict:
    tiles = plan.tiles
    return dict(CHUNK=tiles.chunk, BLOCK_D=tiles.block_d, BLOCK_N=tiles.block_n,
                GROUP=tiles.group)


def _carry_flags(plan) -> dict:
    return dict(BLOCK=plan.carry_block, CHUNKS=plan.carry_chunks)


def _flags(delta_bias, D, z, delta_softplus) -> dict:
    """The chunk kernels' compile-time switches."""
    return dict(HAS_BIAS=delta_bias is not None, HAS_D=D is not None, HAS_Z=z is not None,
                SOFTPLUS=bool(delta_softplus))


def _or(t: torch.Tensor | None, stand_in: torch.Tensor) -> torch.Tensor:
    """An optional tensor, or a stand-in the kernel never reads (its flag is off)."""
    return t if t is not None else stand_in


def _sum(partial: torch.Tensor, dims) -> torch.Tensor:
    """Partial sums summed over `dims` in float64, in a fixed order, back to float32."""
    return partial.sum(dims, dtype=torch.float64).float()
