"""`training.deterministic` and cuDNN's autotuner: the process-wide switches training sets."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from trainrun import fast_options

import ichseg
from ichseg.training.device_setup import CUBLAS_WORKSPACE, configure_device


@pytest.fixture
def switches(monkeypatch):
    """Whatever a test sets is put back afterwards (the switches are global to the process)."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2:]


def test_cuda_gets_the_autotuner_and_deterministic_turns_it_off(switches):
    configure_device(torch.device("cuda"), deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    configure_device(torch.device("cuda", 0), deterministic=True)
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    configure_device(torch.device("cpu"), deterministic=False)
    assert not torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()


def test_training_sets_the_switches_and_logs_its_scan_backend(switches, tiny_dataset, tmp_path,
                                                              caplog):
    with caplog.at_level(logging.INFO):
        result = ichseg.train(tiny_dataset, tmp_path / "run", mode="new", epochs=1,
                              **fast_options(steps=1, sets=["training.deterministic=true"]))
    assert result.state == "finished"
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark
    assert "scan backend cpu" in caplog.text
