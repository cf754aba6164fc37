"""Fixtures shared by the whole test suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from ichseg.data.synth import write_dataset

TINY_SHAPE = (64, 64, 24)
TINY_SPACING = (3.6, 3.6, 5.0)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic cases (64 x 64 x 24 at 3.6 x 3.6 x 5 mm, seed 0) in the generic layout.

    Shared by the session: treat it as read-only, and copy it before changing anything in it.
    """
    root = tmp_path_factory.mktemp("tiny_dataset")
    write_dataset(root, 6, seed=0, shape=TINY_SHAPE, spacing=TINY_SPACING)
    return root
