"""Optional GPU packages (mamba-ssm, causal-conv1d), looked up without making them required."""

from __future__ import annotations

import importlib


def optional_attribute(module: str, name: str):
    """`module.name`, or None where `module` does not import: the package is missing, or its
    CUDA extension fails to load (no GPU, or built for another torch)."""
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:
        return None
