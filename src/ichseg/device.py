"""Choosing the torch device from a setting: one rule for training and prediction."""

from __future__ import annotations

import torch

from ichseg.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")


def pick_device(setting: str, name: str = "training.device") -> torch.device:
    """`auto` -> CUDA when present, else the CPU; `cpu`, `cuda` as asked (UsageError naming the
    setting `name` for another value, or for cuda on a machine without it)."""
    if setting not in DEVICES:
        raise UsageError(f"setting {name} must be one of {', '.join(DEVICES)}, got {setting!r}")
    if setting == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"setting {name} is cuda, but no CUDA device is available")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
