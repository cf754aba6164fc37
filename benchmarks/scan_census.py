"""Launch census of the `triton` scan at a preset's Mamba stages, old kernels against new:

    python benchmarks/scan_census.py [--preset default]

Needs no GPU and no triton: the new kernels' launches come from `triton_plan.launch_plan`, the
plan `triton_scan` launches (tests/test_ssm_triton.py records the launches and checks they are
the plan's). The old kernels' (before issue 21) are computed from their arithmetic: one program
of 1 warp per (scan row of the batch, 16 channels), walking all L tokens in sequence, forward and
backward. Shapes from the config: MICCSS runs its Mamba layer on batch_size patches x 4 flips,
d_inner = expand x the stage's width, L = the stage's voxels. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import math

from ichseg.config import preset_config
from ichseg.models.ssm.triton_plan import launch_plan, tile_sizes

MICCSS_COPIES = 4  # the tokens, channel-flipped, token-flipped, both (models/nnmamba.py)
OLD_BLOCK_D = 16


def mamba_stages(preset: str) -> list[tuple[int, int, int, int]]:
    """(batch, channels, state, length) of each stage's Mamba layer in a training step."""
    cfg = preset_config(preset)
    model = cfg.model
    size = list(cfg.data.patch_size[:model.spatial_dims])
    stages = []
    for level, stride in enumerate(model.strides):
        size = [math.ceil(s / st) for s, st in zip(size, stride[:model.spatial_dims],
                                                    strict=True)]
        if level >= 1 and model.blocks_per_stage > 1:
            width = model.base_width * 2 ** level
            stages.append((cfg.training.batch_size * MICCSS_COPIES, model.expand * width,
                           model.d_state, math.prod(size)))
    return stages


def rows(batch: int, channels: int, state: int, length: int) -> list[tuple]:
    """(kernels, pass, launch, programs, warps per program, warps, longest sequential walk,
    channel blocks one program takes one after another)."""
    old_programs = batch * math.ceil(channels / OLD_BLOCK_D)
    table = [("old", direction, "one walk", old_programs, 1, old_programs, f"{length:,} tokens",
              1) for direction in ("forward", "backward")]
    plan = launch_plan(batch, channels, length, state)
    blocks = math.ceil(min(plan.tiles.group, channels) / plan.tiles.block_d)
    for direction, launches in (("forward", plan.forward), ("backward", plan.backward)):
        for launch in launches:
            walk = (f"{launch.sequential:,} tokens" if launch.walks_tokens
                    else f"{launch.sequential:,} steps of {plan.carry_chunks} chunks")
            programs = launch.grid[0] * launch.grid[1]
            table.append(("new", direction, launch.kernel, programs, launch.num_warps,
                          launch.warps, walk, blocks if launch.walks_tokens else 1))
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    args = parser.parse_args()
    print("| stage: batch, channels, state, tokens | kernels | pass | launch | programs | "
          "warps each | warps | longest sequential walk | channel blocks in turn |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|")
    stages = mamba_stages(args.preset)
    for stage, shape in enumerate(stages, start=1):
        label = f"{stage}: {', '.join(f'{x:,}' for x in shape)}"
        for kernels, direction, launch, programs, each, warps, walk, blocks in rows(*shape):
            print(f"| {label} | {kernels} | {direction} | {launch} | {programs:,} | {each} | "
                  f"{warps:,} | {walk} | {blocks} |")
    for state in sorted({shape[2] for shape in stages}):
        tiles = tile_sizes(state)
        print(f"\nnew tiles at state {state}: chunks of {tiles.chunk} tokens, {tiles.block_d} "
              f"channels scanned together, {tiles.group} channels per program")


if __name__ == "__main__":
    main()
