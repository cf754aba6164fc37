"""The case-level train / validation split: a pure function of the case ids, fraction and seed."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ichseg.errors import UsageError

# Keeps the split's draws apart from every other use of the same seed (patches, model init).
_SPLIT_STREAM = 0x5B117


def make_split(case_ids: Iterable[str], validation_fraction: float,
               seed: int) -> dict[str, list[str]]:
    """{"train": [...], "validation": [...]}, each sorted, deterministic for the same inputs.

    The ids are sorted first, so the split does not depend on the order the files were listed
    in. With a fraction above 0 and at least two cases, validation gets at least one case; the
    training side always keeps at least one.
    """
    ids = sorted(set(case_ids))
    if not ids:
        raise UsageError("the dataset has no cases to split into training and validation")
    if not 0.0 <= validation_fraction < 1.0:
        raise UsageError("setting data.validation_fraction must lie in [0, 1)")
    count = int(round(validation_fraction * len(ids)))
    if validation_fraction > 0 and len(ids) >= 2:
        count = max(count, 1)
    count = min(count, len(ids) - 1)
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(len(ids))
    held_out = {ids[i] for i in order[:count]}
    return {"train": [c for c in ids if c not in held_out],
            "validation": [c for c in ids if c in held_out]}
