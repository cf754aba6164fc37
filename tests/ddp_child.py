"""`ichseg train` with the network's BatchNorm swapped for GroupNorm(1, C), for the test that a
2-process run equals a 1-process run with the same global batch.

Why the swap: BatchNorm normalises with the statistics of the batch a process holds, so under
DDP on CPUs (where PyTorch cannot synchronise BatchNorm) two ranks of one sample each normalise
differently from one process of two samples, by design. GroupNorm(1, C) is per sample, which
leaves everything else the comparison is about (the sampler's split, gradient averaging, the
global-batch Dice, the reduced losses and validation) exactly as in an ordinary run. (Not
InstanceNorm: on the tiny test patch the deepest maps have two voxels per channel, and
normalising over two values magnifies float32 rounding - which differs with the batch size
of the convolutions - far above the tolerance.)

Run as `python tests/ddp_child.py ARGS` or `torchrun ... tests/ddp_child.py ARGS`.
"""

from __future__ import annotations

import sys

from torch import nn

from ichseg.models import nnmamba


def _per_sample_norm(dims: int, kind: str, channels: int) -> nn.Module:
    return nn.GroupNorm(1, channels)  # in place of nnmamba.norm_layer, whatever `kind` says


if __name__ == "__main__":
    # Setting a name the module no longer has would silently leave BatchNorm in place.
    if not hasattr(nnmamba, "norm_layer"):
        raise SystemExit("tests/ddp_child.py: nnmamba.norm_layer is gone; update the swap")
    nnmamba.norm_layer = _per_sample_norm
    from ichseg.cli import main

    raise SystemExit(main(sys.argv[1:]))
