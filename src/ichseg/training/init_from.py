"""`ichseg train --init-from CHECKPOINT`: a new run that starts from another model's weights.

Only the weights come over (fine-tuning): the new run has its own optimizer, schedule, epoch
count, split and config. Tensors whose name and shape fit the new network are copied exactly;
the rest (the output heads going from 2 classes to 6, every layer of another base width) keep
the new run's seeded initialisation and are named in the log. The source file and its SHA-256
are recorded in the run's config (`training.init_from`, `training.init_from_sha256`), so the run
says what it grew from. The weights are applied once, when the run starts: a `continue`
resumes its own checkpoint and never loads them again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ichseg.errors import UsageError

log = logging.getLogger("ichseg.training")


@dataclass
class InitWeights:
    """The source model's weights, read (and checked) before anything is written."""

    path: Path
    sha256: str
    state: dict[str, torch.Tensor]
    network: str | None = None  # the source's model.name, where its checkpoint records it
    loaded: list[str] = field(default_factory=list)   # filled by `apply_init_weights`
    fresh: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def read_init_weights(path: str | Path) -> InitWeights:
    """Any ichseg checkpoint (`last.pt`, `best.pt`, a numbered generation), the legacy format,
    or a bare state dict; verified against its folder's manifest where there is one."""
    from ichseg.training.checkpoint import load_checkpoint_file, model_state_from, sha256_file

    path = Path(path).absolute()
    checkpoint = load_checkpoint_file(path)
    state = model_state_from(checkpoint, path)
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UsageError(f"--init-from {path} holds no network weights")
    config = checkpoint.get("config")
    model = config.get("model") if isinstance(config, dict) else None
    network = model.get("name") if isinstance(model, dict) else None
    return InitWeights(path, sha256_file(path), tensors, network)


def plan_init_weights(cfg: Any, resuming: bool) -> InitWeights | None:
    """The weights a run starting now takes from `training.init_from` (given as `--init-from`,
    or recorded by a start that died before its first checkpoint), matched against `cfg`'s
    network, with their SHA-256 written into `cfg`; None when there is no source or the run
    resumes a checkpoint of its own. Reads only: UsageError before anything is written when the
    file is unusable or not one tensor fits (the wrong file, or another network altogether)."""
    from ichseg.models import build_model

    source = cfg.training.init_from
    if not source:
        return None
    if resuming:
        log.info("--init-from %s was applied when the run started; continuing from the run's "
                 "own checkpoint", source)
        return None
    weights = read_init_weights(source)
    if weights.network is not None and weights.network != cfg.model.name:
        raise UsageError(f"--init-from {weights.path} holds a {weights.network} network, but "
                         f"this run's model.name is {cfg.model.name}")
    own = build_model(cfg).state_dict()
    weights.loaded = [name for name, tensor in own.items()
                      if name in weights.state and weights.state[name].shape == tensor.shape]
    fitting = set(weights.loaded)
    weights.fresh = [name for name in own if name not in fitting]
    weights.unused = [name for name in weights.state if name not in own]
    if not weights.loaded:
        raise UsageError(f"--init-from {weights.path}: none of its {len(weights.state)} tensors "
                         f"fits the configured network")
    cfg.training.init_from = str(weights.path)
    cfg.training.init_from_sha256 = weights.sha256
    return weights


def apply_init_weights(model: nn.Module, weights: InitWeights) -> None:
    """Copy the tensors `plan_init_weights` found fitting into `model`; log the ones left fresh.

    The copies are in place (`load_state_dict`), so an optimizer built on `model` already keeps
    working on the same parameters.
    """
    own = model.state_dict()
    model.load_state_dict({**own, **{name: weights.state[name] for name in weights.loaded}})
    log.info("--init-from %s: %d of %d tensors loaded", weights.path, len(weights.loaded),
             len(own))
    if weights.fresh:
        log.warning("--init-from: %d tensor(s) do not fit the new network and start fresh: %s",
                    len(weights.fresh), ", ".join(_described(weights.fresh, own, weights.state)))
    if weights.unused:
        log.info("--init-from: %d tensor(s) of the source have no place in the new network: %s",
                 len(weights.unused), ", ".join(weights.unused))


def _described(names: list[str], own: dict[str, Any], source: dict[str, Any]) -> list[str]:
    """`name (source shape -> new shape)`, or `name (new)` where the source lacks it."""
    out = []
    for name in names:
        if name in source:
            out.append(f"{name} ({tuple(source[name].shape)} -> {tuple(own[name].shape)})")
        else:
            out.append(f"{name} (new)")
    return out
