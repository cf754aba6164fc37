"""The launch plan of the `triton` backend: tile sizes from a fixed table, every launch's grid.

Plain Python (no triton import), so that the launch census (benchmarks/scan_census.py) and the
tests can read the plan of any shape without a GPU. `triton_scan` launches exactly what
`launch_plan` returns.

The tile sizes come from `TILE_TABLE` by the state size alone, never from timing (Triton's
autotuner would time configurations and could pick another one, with another order of
summation, on the next run; a resumed training run would no longer repeat the uninterrupted
one). The architecture does not enter: a tile of 4,096 float32 values over 8 warps is 16
registers per thread per tile on every CUDA GPU from sm_75 on. The backward's `chunk_gradients`
holds about eight such tiles at once: over 4 warps ptxas spilled them (255 registers and about
1 KB of stack per thread, sm_75/80/90), over 8 it does not.
"""

from __future__ import annotations

from dataclasses import dataclass

# (largest padded state, chunk length in tokens, channels scanned together): a chunk program
# scans tiles of chunk x channels x state = 4,096 values.
TILE_TABLE = (
    (1, 128, 32),
    (2, 128, 16),
    (4, 128, 8),
    (8, 128, 4),
    (16, 128, 2),
    (32, 128, 1),
    (64, 64, 1),
    (128, 32, 1),
    (256, 16, 1),
)
# Channels per chunk program (a multiple of every table row's channel block): the program scans
# them one block after another, sharing its chunk's B and C and summing dB and dC over them.
GROUP_CHANNELS = 64
NUM_WARPS = 8
# The cross-chunk carry: (channel, state) elements per program, chunks composed by one scan
# (a dependent step of the carry), and its warps.
CARRY_BLOCK = 32
CARRY_CHUNKS = 64
CARRY_WARPS = 4


@dataclass(frozen=True)
class Tiles:
    """The compile-time sizes of the chunk kernels."""

    chunk: int  # tokens per chunk program
    block_d: int  # channels scanned together
    block_n: int  # the state, padded to a power of two
    group: int  # channels per program, a multiple of block_d


@dataclass(frozen=True)
class Launch:
    """One kernel launch: its grid, warps, and the longest dependent walk of one program."""

    kernel: str  # the function's name in triton_kernels
    grid: tuple[int, int]
    num_warps: int
    walks_tokens: bool  # False for the carry across chunks, which walks chunk states
    sequential: int  # tokens per program (a chunk), or for a carry its dependent steps

    @property
    def warps(self) -> int:
        return self.grid[0] * self.grid[1] * self.num_warps


@dataclass(frozen=True)
class ScanPlan:
    tiles: Tiles
    chunks: int
    groups: int
    carry_block: int  # the carry's (channel, state) elements per program
    carry_chunks: int  # chunks per dependent step of the carry
    forward: tuple[Launch, ...]
    backward: tuple[Launch, ...]


def next_power_of_2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def tile_sizes(state: int) -> Tiles:
    """The table's row for the state (its last row beyond the table)."""
    block_n = next_power_of_2(state)
    row = next((r for r in TILE_TABLE if block_n <= r[0]), TILE_TABLE[-1])
    _, chunk, block_d = row
    return Tiles(chunk=chunk, block_d=block_d, block_n=block_n,
                 group=max(GROUP_CHANNELS // block_d, 1) * block_d)


def launch_plan(batch: int, channels: int, length: int, state: int) -> ScanPlan:
    """Every launch of one forward and one backward, in order.

    Chunk programs cover (chunk, group of channels, batch element); the grid's first axis runs
    over the groups fastest, so the programs in flight together share their chunk's B and C in
    the cache.
    """
    tiles = tile_sizes(state)
    chunks = -(-length // tiles.chunk)
    groups = -(-channels // tiles.group)
    chunk_grid = (groups * chunks, batch)
    carry_grid = (-(-(channels * state) // CARRY_BLOCK), batch)

    def chunk_launch(kernel):
        return Launch(kernel, chunk_grid, NUM_WARPS, True, tiles.chunk)

    def carry_launch(kernel):
        return Launch(kernel, carry_grid, CARRY_WARPS, False, -(-chunks // CARRY_CHUNKS))

    return ScanPlan(
        tiles=tiles, chunks=chunks, groups=groups, carry_block=CARRY_BLOCK,
        carry_chunks=CARRY_CHUNKS,
        forward=(chunk_launch("chunk_ends"), carry_launch("carry"),
                 chunk_launch("chunk_outputs")),
        backward=(chunk_launch("chunk_adjoints"), carry_launch("carry"),
                  chunk_launch("chunk_gradients")))
