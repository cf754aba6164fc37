"""Loading that can never run code: `torch.load(weights_only=True)` with an allow-list of NumPy's
plain numeric constructors, one file checked against the manifest beside it, and the weights of a
checkpoint for inference."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ichseg.errors import UsageError
from ichseg.training.checkpoint import files
from ichseg.training.checkpoint.manifest import (
    BEST,
    LAST,
    LEGACY_KEYS,
    MANIFEST,
    UNREADABLE,
    Bad,
    Folder,
    entries,
)


def numpy_data_globals() -> list[Any]:
    """NumPy's constructors of plain numeric scalars and arrays, for `weights_only` loading.

    Legacy checkpoints often hold NumPy floats (a `best_val` from `np.mean`). These globals only
    rebuild numbers from bytes; object arrays stay refused (their dtype is not listed). Pickles
    made by NumPy 1.x name the module `numpy.core.multiarray`, NumPy 2 `numpy._core.multiarray`:
    both spellings are listed.
    """
    from numpy._core import multiarray

    allowed: list[Any] = [np.ndarray, np.dtype]
    for name in ("scalar", "_reconstruct"):
        function = getattr(multiarray, name)
        allowed += [(function, f"numpy.core.multiarray.{name}"),
                    (function, f"numpy._core.multiarray.{name}")]
    allowed += [type(np.dtype(code)) for code in "?bBhHiIlLqQefdFD"]
    return allowed


def torch_load(path: Path) -> dict[str, Any]:
    """`torch.load(weights_only=True)`, its failures turned into a verdict."""
    try:
        with torch.serialization.safe_globals(numpy_data_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not know, before calling it: nothing ran.
        detail = str(exc).splitlines()[0] if str(exc) else "unsupported object"
        if "weights only" in detail.lower() or "unsupported global" in str(exc).lower():
            raise Bad("refused: it holds objects that could run code when loaded "
                       f"({_unsupported_global(str(exc))})") from None
        raise Bad(f"{UNREADABLE} ({detail})") from None
    except Exception as exc:  # truncated zip, wrong magic, EOF: torch raises several types
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise Bad(f"{UNREADABLE} ({detail[:160]})") from None
    if not isinstance(state, dict):
        raise Bad(f"{UNREADABLE} (holds a {type(state).__name__}, not a checkpoint dict)")
    return state


def _unsupported_global(message: str) -> str:
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else "weights-only load failed"


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint file (`--resume-from`, `predict --checkpoint`) with its checks.

    Verified against a manifest beside it when there is one; always `weights_only=True`, so a
    pickle that would run code is refused (UsageError naming the file) without running it.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint file {path} does not exist")
    folder = Folder(path.parent, "local")
    try:
        manifest = folder.read_manifest()
    except Bad:
        manifest = None
    if manifest is not None:
        _verify_against(path, manifest)
    try:
        return torch_load(path)
    except Bad as exc:
        raise UsageError(f"checkpoint file {path} is not usable: {exc}") from None


def _verify_against(path: Path, manifest: dict[str, Any]) -> None:
    """Check `path` against the manifest of its folder: by its own name, through the link it is,
    or (an alias copy where links are unsupported) by matching any listed file's SHA-256."""
    listed_entries = entries(manifest)
    name = path.resolve().name
    listed = {e["file"]: e for e in listed_entries}
    if name in listed:
        expected = {listed[name]["sha256"]}
    elif path.name in (LAST, BEST):
        expected = {e["sha256"] for e in listed_entries}
    else:
        return  # a file the manifest does not cover (copied in by hand): nothing to compare with
    if files.sha256_file(path) not in expected:
        raise UsageError(f"checkpoint file {path} does not match the SHA-256 recorded in "
                         f"{path.parent / MANIFEST}: it is damaged")


def is_legacy(checkpoint: dict[str, Any]) -> bool:
    """True for the old format: the eight legacy keys only (no format_version, step or rng)."""
    return (isinstance(checkpoint, dict) and "model_state" in checkpoint
            and set(checkpoint) <= LEGACY_KEYS)


def model_state_from(checkpoint: dict[str, Any], origin: str | Path = "checkpoint") -> dict:
    """The network weights of a checkpoint (ours, legacy, or a bare state dict) for inference."""
    state = checkpoint.get("model_state")
    if state is None and checkpoint and all(isinstance(v, torch.Tensor)
                                            for v in checkpoint.values()):
        state = checkpoint  # a bare `model.state_dict()` saved on its own
    if not isinstance(state, dict):
        raise UsageError(f"checkpoint {origin} holds no model_state")
    return state
