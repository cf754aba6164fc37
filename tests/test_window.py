"""The sliding window (models/window.py): how many windows go through the network at once never
changes the logits, and `inference.sw_batch_size` decides it."""

from __future__ import annotations

import pytest
import torch

from ichseg.config import preset_config, resolve_config
from ichseg.errors import UsageError
from ichseg.models import build_model
from ichseg.models.window import (
    AUTO_WINDOWS_CUDA,
    AUTO_WINDOWS_OTHER,
    window_logits,
    windows_per_pass,
)


def test_the_logits_of_a_volume_do_not_depend_on_the_windows_per_pass():
    cfg = preset_config("tiny")  # 32 x 32 x 16 windows
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))
    # 2 x 3 x 1 windows at overlap 0.5: a pass of 4, then the remaining 2.
    image = torch.rand(1, cfg.in_channels, 48, 64, 16)
    logits = {}
    for windows in (1, 4):
        cfg.inference.sw_batch_size = windows
        seen.clear()
        with torch.no_grad():
            logits[windows] = window_logits(model, image, cfg)
        assert max(seen) == windows  # the setting reaches the network
    assert seen == [4, 2]
    assert logits[1].shape == (1, cfg.num_classes, 48, 64, 16)
    torch.testing.assert_close(logits[4], logits[1], rtol=0, atol=1e-5)


def test_auto_windows_per_pass_by_device():
    assert windows_per_pass(-1, torch.device("cpu")) == AUTO_WINDOWS_OTHER == 2
    assert windows_per_pass(-1, torch.device("cuda")) == AUTO_WINDOWS_CUDA == 4
    assert windows_per_pass(3, torch.device("cuda")) == 3
    assert preset_config("default").inference.sw_batch_size == -1


@pytest.mark.parametrize("value", [0, -2])
def test_windows_per_pass_must_be_positive_or_auto(value):
    with pytest.raises(UsageError, match="inference.sw_batch_size"):
        resolve_config("tiny", sets=[f"inference.sw_batch_size={value}"])
