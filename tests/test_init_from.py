"""Fine-tuning (`ichseg train --init-from CHECKPOINT`): weights alone from another model, the
layers that do not fit left fresh and named, provenance in config.yaml, and a fine-tuned run
killed and continued ends bit-identical to one never stopped.

The source is a tiny binary run trained here with instance norm (no running statistics, so a
learning rate of 0 leaves every tensor of a network as it was).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml
from trainrun import assert_same_training, fast_args, fast_options, load_last, run_cli

import ichseg
from ichseg.cli import main as cli_main
from ichseg.errors import UsageError
from ichseg.training.checkpoint import load_checkpoint_file, sha256_file
from ichseg.training.modes import plan_run

NORM = ["model.norm=instance"]


@pytest.fixture(scope="module")
def source(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of a tiny any-hemorrhage run: the model a user fine-tunes from."""
    run = tmp_path_factory.mktemp("source") / "run"
    ichseg.train(tiny_dataset, run, mode="new", epochs=1, **fast_options(sets=NORM))
    return run / "checkpoints" / "best.pt"


def test_lr_0_keeps_every_loaded_tensor_and_names_the_fresh_ones(tiny_dataset, source, tmp_path,
                                                               caplog):
    """From 2 classes to 6: the output heads start fresh, everything else is the source's."""
    weights = load_checkpoint_file(source)["model_state"]
    with caplog.at_level(logging.INFO, logger="ichseg"):
        ichseg.train(tiny_dataset, tmp_path / "tuned", mode="new", epochs=1, init_from=source,
                     **fast_options(sets=[*NORM, "data.subtypes=true", "training.lr=0",
                                          "training.scheduler=constant"]))
    tuned = load_last(tmp_path / "tuned")
    assert tuned["epoch"] == 1 and tuned["step"] == 2  # it trained, with its own schedule
    final = tuned["model_state"]
    fresh = sorted(n for n in final if final[n].shape != weights[n].shape)
    assert fresh and all("head" in n for n in fresh)
    for name, tensor in final.items():
        if name not in fresh:
            assert torch.equal(tensor, weights[name]), name
    said = next(r.getMessage() for r in caplog.records if "start fresh" in r.getMessage())
    named = said.split("start fresh: ")[1].split("), ")
    assert sorted(entry.split(" (")[0] for entry in named) == fresh
    recorded = yaml.safe_load((tmp_path / "tuned" / "config.yaml").read_text())["training"]
    assert recorded["init_from"] == str(source)
    assert recorded["init_from_sha256"] == sha256_file(source)
    assert tuned["config"]["training"]["init_from_sha256"] == sha256_file(source)
    # A training optimizer of its own: the source's momentum buffers did not come along.
    assert tuned["optimizer_state"]["param_groups"][0]["lr"] == 0.0


def test_legacy_checkpoints_and_bad_combinations(tiny_dataset, source, tmp_path):
    state = load_checkpoint_file(source)
    legacy = {k: state[k] for k in ("model_state", "epoch", "history", "best_val", "no_improve",
                                    "optimizer_state", "scheduler_state", "scaler_state")}
    torch.save(legacy, tmp_path / "legacy.pt")
    plan = plan_run(tiny_dataset, tmp_path / "run", init_from=tmp_path / "legacy.pt",
                    **fast_options(sets=NORM))
    assert plan.checkpoint is None and not plan.init_weights.fresh  # a new run, all loaded
    assert plan.init_weights.loaded == list(state["model_state"])
    # Another network altogether, or both kinds of start: exit 2, nothing written.
    with pytest.raises(UsageError, match="holds a nnmamba network, but this run's model.name is "
                                         "dynunet"):
        plan_run(tiny_dataset, tmp_path / "run", init_from=source,
                 **fast_options(sets=[*NORM, "model.name=dynunet"]))
    torch.save({"other.weight": torch.zeros(3, 3)}, tmp_path / "bare.pt")
    with pytest.raises(UsageError, match="none of its 1 tensors fits"):
        plan_run(tiny_dataset, tmp_path / "run", init_from=tmp_path / "bare.pt",
                 **fast_options(sets=NORM))
    with pytest.raises(UsageError, match="either --resume-from .* or --init-from"):
        plan_run(tiny_dataset, tmp_path / "run", init_from=source, resume_from=source)
    with pytest.raises(UsageError, match="does not exist"):
        plan_run(tiny_dataset, tmp_path / "run", init_from=tmp_path / "missing.pt")
    assert not (tmp_path / "run").exists()


def test_a_killed_fine_tuned_run_continues_bit_identical(tiny_dataset, source, tmp_path, caplog):
    """SIGKILL (the child's own PID) halfway through writing its second checkpoint, mid-epoch,
    then the same command again: it resumes its own checkpoint (after step 1) and never reloads
    the source weights. The kill needs a child process; the reference and the continuation run
    in this one (the same command either way: the CPU result does not depend on the process)."""
    def command(run: Path) -> list[str]:
        return fast_args(tiny_dataset, run, "--epochs", "1", "--save-every-steps", "1",
                         "--init-from", str(source), "--set", NORM[0], steps=3)

    assert cli_main(command(tmp_path / "reference")) == 0
    killed = run_cli(command(tmp_path / "run"), fault="kill-in-save:2")
    assert killed.returncode == -9, killed.stderr
    assert load_last(tmp_path / "run")["step"] == 1
    with caplog.at_level(logging.INFO, logger="ichseg"):
        assert cli_main(command(tmp_path / "run")) == 0
    assert "applied when the run started" in caplog.text
    final = load_last(tmp_path / "run")
    assert final["epoch"] == 1 and final["step"] == 3 and final["history"]["session"] == [2]
    assert_same_training(final, load_last(tmp_path / "reference"))
