"""The case-level split: deterministic, order-independent, with the minimums on each side."""

from __future__ import annotations

import pytest

from ichseg.data.split import make_split
from ichseg.errors import UsageError

IDS = [f"case_{k:03d}" for k in range(20)]


def test_same_inputs_same_split_whatever_the_listing_order():
    split = make_split(IDS, 0.2, seed=5)
    assert make_split(list(reversed(IDS)), 0.2, seed=5) == split
    assert len(split["validation"]) == 4 and len(split["train"]) == 16
    assert sorted(split["train"] + split["validation"]) == IDS
    assert split["train"] == sorted(split["train"])


def test_seed_changes_the_held_out_cases():
    held_out = {tuple(make_split(IDS, 0.2, seed)["validation"]) for seed in range(6)}
    assert len(held_out) > 1


@pytest.mark.parametrize("count,fraction,validation", [
    (2, 0.01, 1),   # a fraction above 0 always holds one case out ...
    (2, 0.9, 1),    # ... and training keeps at least one
    (5, 0.0, 0),
    (1, 0.5, 0),    # a single case trains; nothing to validate on
    (10, 0.25, 2),  # 2.5 rounds to 2 (banker's rounding is fine, it is deterministic)
])
def test_minimum_cases_on_each_side(count, fraction, validation):
    split = make_split(IDS[:count], fraction, seed=0)
    assert len(split["validation"]) == validation
    assert len(split["train"]) == count - validation >= 1


def test_no_cases_is_a_usage_error():
    with pytest.raises(UsageError, match="no cases"):
        make_split([], 0.2, seed=0)
