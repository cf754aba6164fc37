"""`ichseg status RUN` / `ichseg.check_training_status`: where a run stands, read from its folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from trainrun import fast_options, snapshot

import ichseg
from ichseg.cli import main as cli_main
from ichseg.errors import UsageError
from ichseg.training.lock import RunLock
from ichseg.training.status import format_status


@pytest.fixture(scope="module")
def stopped_run(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two of four epochs done (as after a clean stop), three steps per epoch."""
    run = tmp_path_factory.mktemp("status") / "run"
    ichseg.train(tiny_dataset, run, mode="new", epochs=2, **fast_options(steps=3))
    # The target is raised in config.yaml the way a continue that was stopped leaves it.
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 2", "epochs: 4"))
    return run


def test_status_of_a_stopped_run(stopped_run):
    before = snapshot(stopped_run)
    status = ichseg.check_training_status(stopped_run)
    assert snapshot(stopped_run) == before  # status only reads
    assert status["state"] == "stopped"
    assert (status["epochs_completed"], status["target_epochs"], status["step"]) == (2, 4, 6)
    # `best` is the highest moving average of the pooled validation Dice.
    assert status["select_by"] == "pooled_dice" and status["best_epoch"] in (1, 2)
    assert 0 <= status["best_val"] <= 1 and 0 <= status["last_val_pooled_dice"] <= 1
    assert status["patience"] == 5 and status["no_improve"] in (0, 1)
    assert status["lr"] > 0 and status["time_trained_s"] > 0
    assert status["eta_s"] > 0  # two epochs left at the measured pace
    kinds = sorted(row["kind"] for row in status["checkpoints"])
    assert kinds == ["best", "ckpt", "ckpt"]
    assert all(row["verdict"] == "ok" and row["size"] > 0 for row in status["checkpoints"])
    assert status["continue_command"] == f"ichseg train --run-dir {stopped_run.resolve()}"
    json.dumps(status, allow_nan=False)  # plain JSON for scripts

    text = format_status(status)
    for expected in ("state      stopped", "epochs     2 of 4", "steps      6",
                     "best       smoothed pooled Dice", ", pooled 0.", "(smoothed 0.",
                     "patience 5", "remaining  about", "ckpt-", "best-", " ok",
                     f"continue   ichseg train --run-dir {stopped_run.resolve()}"):
        assert expected in text, expected


def test_status_says_what_an_old_run_judges_and_when_patience_starts(stopped_run):
    status = ichseg.check_training_status(stopped_run)
    text = format_status({**status, "select_by": "val_loss", "last_val_pooled_dice": None,
                          "min_epochs": 50, "patience": 12})
    assert "best       validation loss" in text and "pooled" not in text
    assert "patience 12 (counted after epoch 50)" in text


def test_status_reports_a_damaged_generation_and_a_finished_run(stopped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run, symlinks=True)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 4", "epochs: 2"))
    oldest = min((run / "checkpoints").glob("ckpt-*.pt"))
    oldest.write_bytes(oldest.read_bytes()[:-10])
    status = ichseg.check_training_status(run)
    assert status["state"] == "finished" and status["eta_s"] is None
    verdicts = {row["file"]: row["verdict"] for row in status["checkpoints"]}
    assert verdicts[oldest.name] == "checksum mismatch"
    assert status["continue_command"].endswith("--additional-epochs 10")


def test_status_of_a_run_in_progress_says_running(stopped_run):
    with RunLock(stopped_run):
        assert ichseg.check_training_status(stopped_run)["state"] == "running"
    assert ichseg.check_training_status(stopped_run)["state"] == "stopped"


def test_status_of_a_run_not_started(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("preset: tiny\n")
    status = ichseg.check_training_status(tmp_path / "run")
    assert status["state"] == "not started" and status["checkpoints"] == []
    assert "none" in format_status(status)


def test_status_cli_json_and_a_folder_that_is_not_a_run(stopped_run, tmp_path, capsys):
    assert cli_main(["status", str(stopped_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["epochs_completed"] == 2
    with pytest.raises(UsageError, match="not a training run"):
        ichseg.check_training_status(tmp_path)
    assert cli_main(["status", str(tmp_path / "missing")]) == 2
