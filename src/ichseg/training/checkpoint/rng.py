"""Every random number generator a training step can draw from, captured and restored as tensors
and plain numbers (so a weights-only load needs no allow-list for them)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU, and CUDA when present), NumPy's global and Python's `random` states, as
    tensors and plain numbers, so `torch.load(weights_only=True)` needs no allow-list."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo `capture_rng_state`; CUDA states are restored only where this machine has CUDA."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32),
                         np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()),
                     py["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        devices = min(len(cuda), torch.cuda.device_count())
        for device in range(devices):
            torch.cuda.set_rng_state(cuda[device], device)


@contextlib.contextmanager
def rng_untouched() -> Iterator[None]:
    """Run a block (validation) without moving any global RNG the training could draw from."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)
