"""ichseg: intracranial hemorrhage segmentation on head CT with an nnMamba U-Net.

The public API is a handful of plain functions; the `ichseg` command is a thin layer over them.
Heavy imports (torch, MONAI) happen on first use so that `ichseg --help` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = ("train", "check_training_status", "predict", "evaluate", "synthesize", "inspect", "plot",
        "crossval")
__all__ = [*_API, "__version__"]


def __getattr__(name: str):
    if name in _API:
        from ichseg import api

        return getattr(api, name)
    if name == "models":
        import importlib

        return importlib.import_module("ichseg.models")
    raise AttributeError(f"module 'ichseg' has no attribute {name!r}")
