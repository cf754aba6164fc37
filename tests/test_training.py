"""Training modes and targets (docs/CONTRACT.md "Training modes"), the user's three scenarios, the loss,
the schedules, early stopping and the history.

Runs go through `ichseg.train` in this process, on the tiny preset with a 16 x 16 x 8 patch and
two steps per epoch; `test_resume.py` covers stops and exact continuation in child processes.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trainrun import assert_same_training, fast_options, load_last, snapshot

import ichseg
from ichseg.errors import UsageError
from ichseg.training.checkpoint import load_checkpoint_file
from ichseg.training.history import COLUMNS, History
from ichseg.training.loop import Trainer
from ichseg.training.losses import DeepSupervisionLoss, dice_ce
from ichseg.training.optim import PolyLR
from ichseg.training.progress import EarlyStopping


def train(data, run, mode="continue", **options):
    return ichseg.train(data, run, mode=mode, **fast_options(**options))


@pytest.fixture(scope="module")
def five_epochs(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Scenario 1 of the seed: a new run of 5 epochs (kept read-only; copy it to change it)."""
    run = tmp_path_factory.mktemp("five") / "run"
    # Every epoch's generation is kept, for the comparison in the same-command test.
    result = train(tiny_dataset, run, mode="new", epochs=5,
                   sets=["training.keep_checkpoints=5", "inference.postprocess=true"])
    assert (result.state, result.epochs_completed, result.target_epochs) == ("finished", 5, 5)
    return run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, symlinks=True)
    return dest


# --- the seed's scenarios ---------------------------------------------------------------------

def test_new_run_writes_the_run_folder(five_epochs):
    for name in ("config.yaml", "split.json", "history.csv", "train.log", "progress.png",
                 "checkpoints/last.pt", "checkpoints/best.pt", "postprocessing.json"):
        assert (five_epochs / name).exists(), name
    state = load_last(five_epochs)
    assert state["epoch"] == 5 and state["epoch_step"] == 0 and state["step"] == 10
    assert state["history"]["epoch"] == [1, 2, 3, 4, 5]
    assert state["history"]["session"] == [1] * 5
    # history.csv mirrors the checkpoint's history, one row per epoch.
    rows = (five_epochs / "history.csv").read_text().splitlines()
    assert rows[0].split(",") == list(COLUMNS) and len(rows) == 6
    # config.yaml is the resolved config, every default filled in.
    cfg = ichseg.config.read_run_config(five_epochs / "config.yaml")
    assert cfg.training.epochs == 5 and cfg.data.patch_size == [16, 16, 8]
    assert cfg.training.steps_per_epoch == 2 and cfg.training.momentum == 0.99


def test_continue_to_a_higher_target_starts_at_the_next_epoch(five_epochs, tmp_path, caplog):
    run = copy_run(five_epochs, tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="ichseg"):
        result = ichseg.train(None, run, epochs=8)  # data and config come from config.yaml
    assert (result.state, result.epochs_completed, result.target_epochs) == ("finished", 8, 8)
    assert "at epoch 6" in caplog.text
    history = load_last(run)["history"]
    assert history["epoch"] == list(range(1, 9))
    assert history["session"] == [1] * 5 + [2] * 3  # the plot marks where it was continued
    assert "epoch 6/8" in (run / "train.log").read_text()


def test_additional_epochs_count_from_the_checkpoint(five_epochs, tmp_path):
    run = copy_run(five_epochs, tmp_path / "run")
    result = ichseg.train(None, run, additional_epochs=3)
    assert (result.epochs_completed, result.target_epochs) == (8, 8)
    assert ichseg.config.read_run_config(run / "config.yaml").training.epochs == 8


def test_continue_with_nothing_saved_warns_and_starts_new(tiny_dataset, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ichseg"):
        result = train(tiny_dataset, tmp_path / "run", epochs=1)
    assert "no checkpoint" in caplog.text and "starting a new run" in caplog.text
    assert result.epochs_completed == 1
    assert "no checkpoint" in (tmp_path / "run" / "train.log").read_text()


def test_strict_resume_with_nothing_saved_exits_2_without_writing(tiny_dataset, tmp_path):
    with pytest.raises(UsageError, match="strict-resume"):
        train(tiny_dataset, tmp_path / "run", epochs=1, strict_resume=True)
    assert not (tmp_path / "run").exists()


def test_a_finished_run_does_nothing_until_the_target_is_raised(five_epochs, caplog):
    before = snapshot(five_epochs)
    with caplog.at_level(logging.INFO, logger="ichseg"):
        result = ichseg.train(None, five_epochs)
    assert result.state == "already-finished" and result.epochs_completed == 5
    assert "already reached its target of 5 epochs" in caplog.text
    assert snapshot(five_epochs) == before


# --- modes --------------------------------------------------------------------------------------

def test_mode_new_archives_the_old_run_and_deletes_nothing(tiny_dataset, five_epochs, tmp_path):
    run = copy_run(five_epochs, tmp_path / "run")
    old_files = {p: s for p, s in snapshot(run).items()}
    result = train(tiny_dataset, run, mode="new", epochs=1)
    assert result.epochs_completed == 1 and load_last(run)["history"]["epoch"] == [1]
    (archived,) = (run / "archive").iterdir()
    moved = {p: s for p, s in snapshot(archived).items()}
    assert set(moved) == set(old_files)  # every file of the old run, sizes unchanged
    assert all(moved[p][0] == old_files[p][0] for p in moved)


def test_a_fresh_runtime_continues_from_the_mirror(tiny_dataset, tmp_path, caplog):
    """Colab: the local run folder is gone after a reset; the mirror (Drive) still has it."""
    run, mirror = tmp_path / "run", tmp_path / "drive"
    train(tiny_dataset, run, epochs=1, mirror_dir=mirror)
    shutil.rmtree(run)
    with caplog.at_level(logging.WARNING, logger="ichseg"):
        result = ichseg.train(None, run, mirror_dir=mirror, additional_epochs=1)
    assert "resuming from the mirror" in caplog.text
    assert result.epochs_completed == 2
    assert load_last(run)["history"]["session"] == [1, 2]
    # --mode new moves the mirror's old run aside too, so it never wins a later continue.
    train(tiny_dataset, run, mode="new", epochs=1, mirror_dir=mirror)
    assert (mirror / "archive").is_dir() and load_last(run)["epoch"] == 1


def test_a_model_change_on_continue_is_refused_with_the_keys(five_epochs, caplog):
    before = snapshot(five_epochs)
    with pytest.raises(UsageError) as error:
        ichseg.train(None, five_epochs, epochs=6,
                     sets=["model.base_width=8", "training.lr=0.1"])
    assert "model.base_width" in str(error.value) and "training.lr" in str(error.value)
    assert snapshot(five_epochs) == before


def test_harmless_changes_on_continue_are_allowed_and_logged(five_epochs, tmp_path, caplog):
    run = copy_run(five_epochs, tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="ichseg"):
        result = ichseg.train(None, run, epochs=6, patience=9)
    assert result.epochs_completed == 6
    assert "training.patience changed on continue: 5 -> 9" in caplog.text
    assert ichseg.config.read_run_config(run / "config.yaml").training.patience == 9


def test_legacy_checkpoint_loads_through_resume_from(tiny_dataset, five_epochs, tmp_path, caplog):
    state = load_last(five_epochs)
    legacy = {k: state[k] for k in ("model_state", "epoch", "history", "best_val", "no_improve",
                                    "optimizer_state", "scheduler_state", "scaler_state")}
    legacy["history"] = {"train_loss": state["history"]["train_loss"],
                         "val_loss": state["history"]["val_loss"]}  # the old script's columns
    path = tmp_path / "old_model.pt"
    torch.save(legacy, path)
    with caplog.at_level(logging.WARNING, logger="ichseg"):
        result = train(tiny_dataset, tmp_path / "run", resume_from=path, additional_epochs=1)
    assert "legacy format" in caplog.text and "not bit-exactly" in caplog.text
    assert result.epochs_completed == 6
    resumed = load_last(tmp_path / "run")
    assert resumed["history"]["epoch"] == [1, 2, 3, 4, 5, 6]
    assert resumed["history"]["train_loss"][:5] == state["history"]["train_loss"]
    assert resumed["step"] == 12  # the schedule continued from epoch 5's step count
    # Weights of another network are refused before anything is written.
    with pytest.raises(UsageError, match="does not fit the configured network"):
        train(tiny_dataset, tmp_path / "other", resume_from=path, sets=["model.base_width=8"])
    assert not (tmp_path / "other").exists()


def test_the_same_command_twice_gives_bit_identical_states(tiny_dataset, five_epochs, tmp_path):
    again = train(tiny_dataset, tmp_path / "again", mode="new", epochs=2,
                  sets=["training.keep_checkpoints=5"])
    # The 5-epoch run kept its epoch-2 generation: the same command up to there, bit for bit.
    (epoch_2,) = [p for p in (five_epochs / "checkpoints").glob("ckpt-*.pt")
                  if load_checkpoint_file(p)["epoch"] == 2]
    assert_same_training(load_last(again.run_dir), load_checkpoint_file(epoch_2))


def test_early_stop_then_a_raised_target_restarts_the_patience(tiny_dataset, tmp_path, caplog,
                                                                monkeypatch):
    # A validation that never improves after epoch 1.
    monkeypatch.setattr(Trainer, "validate", lambda self: (1.0, 0.5, 0.5))
    run = tmp_path / "run"
    result = train(tiny_dataset, run, epochs=10, patience=2, steps=1,
                   sets=["training.min_epochs=0"])
    assert (result.state, result.epochs_completed, result.best_epoch) == ("early-stopped", 3, 1)
    with caplog.at_level(logging.INFO, logger="ichseg"):
        again = train(tiny_dataset, run, epochs=10, steps=1)
    assert again.state == "already-finished" and "stopped early at epoch 3" in caplog.text
    raised = train(tiny_dataset, run, additional_epochs=5, steps=1)
    # A fresh count of 2 bad epochs: epochs 4 and 5, then it stops again.
    assert (raised.state, raised.epochs_completed, raised.target_epochs) == ("early-stopped", 5, 8)


def test_bad_usage_is_refused_before_anything_is_written(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(UsageError, match="--data"):
        ichseg.train(None, run, preset="tiny")
    with pytest.raises(UsageError, match="not both"):
        train(tiny_dataset, run, epochs=3, additional_epochs=2)
    with pytest.raises(UsageError, match="time-limit"):
        train(tiny_dataset, run, time_limit="soon")
    with pytest.raises(UsageError, match="does not exist"):
        train(tiny_dataset, run, resume_from=tmp_path / "nothing.pt")
    # A checkpoint whose pickle would run code is refused without running it.
    marker = tmp_path / "ran"
    torch.save({"model_state": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UsageError, match="evil.pt"):
        train(tiny_dataset, run, resume_from=tmp_path / "evil.pt")
    assert not marker.exists() and not run.exists()


def test_a_slow_first_step_does_not_end_a_time_limited_session_early(tiny_dataset, tmp_path,
                                                                     monkeypatch):
    # The session's first step pays one-off costs (compiling the scan kernels). Were it the
    # estimate of every later step, a 6 s first step would stop a 12 s session right after it;
    # the estimate follows the recent steps instead, so the session keeps training.
    first_step = Trainer.train_step
    calls = []

    def slow_first_step(self, images, labels):
        calls.append(None)
        if len(calls) == 1:
            time.sleep(6.0)
        return first_step(self, images, labels)

    monkeypatch.setattr(Trainer, "train_step", slow_first_step)
    result = train(tiny_dataset, tmp_path / "run", mode="new", epochs=1000, time_limit="12s")
    assert result.state == "stopped"
    assert len(calls) >= 3


class _RunsCode:
    """Unpickling this calls `Path.touch`: a stand-in for any code a pickle could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


# --- pieces ---------------------------------------------------------------------------------

def test_deep_supervision_weights_and_downsampled_labels():
    torch.manual_seed(0)
    labels = (torch.rand(2, 1, 8, 8, 4) > 0.7).long()
    perfect = F.one_hot(labels[:, 0], 2).permute(0, 4, 1, 2, 3).float() * 40 - 20
    coarse_labels = F.interpolate(labels.float(), size=(4, 4, 2), mode="nearest").long()
    coarse_perfect = F.one_hot(coarse_labels[:, 0], 2).permute(0, 4, 1, 2, 3).float() * 40 - 20
    loss = DeepSupervisionLoss()
    assert loss(perfect, labels) < 1e-3
    # A head at half resolution is compared with the labels brought to its size.
    assert loss([perfect, coarse_perfect], labels) < 1e-3
    # A wrong coarse head costs its weight share: 1/2 of (1 + 1/2).
    wrong = -coarse_perfect
    expected = dice_ce()(wrong, coarse_labels) * (0.5 / 1.5)
    assert torch.allclose(loss([perfect, wrong], labels), expected, atol=1e-3)


def test_poly_schedule_is_closed_form_and_stretches_with_the_target():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.01)
    schedule = PolyLR(optimizer, total_steps=10)
    lrs = []
    for _ in range(10):
        optimizer.step()
        schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[-1] == 0.0 and lrs[4] == pytest.approx(0.01 * 0.5 ** 0.9)
    schedule.total_steps = 20  # the target doubled: halfway again
    schedule.last_epoch -= 1
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** 0.9)


def test_early_stopping_counts_epochs_without_improvement():
    early = EarlyStopping(patience=2)  # the rule of the runs from before the pooled Dice
    assert early.update(1, 1.0) and early.update(2, 0.9)
    assert not early.update(3, 0.9) and not early.stopped
    assert not early.update(4, 1.5) and early.stopped
    assert (early.best, early.best_epoch) == (0.9, 2)
    never = EarlyStopping(patience=0)
    for epoch in range(1, 20):
        never.update(epoch, 1.0)
    assert not never.stopped


def test_the_pooled_dice_is_judged_smoothed_and_patience_waits_for_min_epochs():
    early = EarlyStopping(patience=2, rule="pooled_dice", min_epochs=3, smoothing=0.5)
    # The loss is ignored: only the moving average of the pooled Dice counts.
    assert early.update(1, 9.0, 0.4) and early.smoothed == 0.4
    assert early.update(2, 9.0, 0.8) and early.smoothed == pytest.approx(0.6)
    # One validation at 0 lowers the average; before epoch 3 is done it is not counted.
    assert not early.update(3, 0.1, 0.0) and early.bad_validations == 0
    assert early.smoothed == pytest.approx(0.3)
    assert not early.update(4, 0.1, 0.6) and early.bad_validations == 1 and not early.stopped
    assert not early.update(5, 0.1, 0.5) and early.stopped  # 0.45 and 0.475 < 0.6
    assert (early.best, early.best_epoch) == (pytest.approx(0.6), 2)
    # The average and the rule continue from the checkpoint; an old state keeps the loss rule.
    again = EarlyStopping(patience=2)
    again.load_state_dict(early.state_dict())
    assert (again.rule, again.smoothed, again.best_epoch) == ("pooled_dice", early.smoothed, 2)
    old = {k: v for k, v in early.state_dict().items() if k not in ("rule", "smoothed")}
    again = EarlyStopping(patience=2, rule="pooled_dice")
    again.load_state_dict(old | {"best_val": 0.7})
    assert again.rule == "val_loss" and again.update(6, 0.5, 0.0) and again.best == 0.5


def _case(case_id, blood, predicted):
    """A validation case whose HU marks the voxels that `_predict_marked` predicts as blood."""
    from ichseg.data.cache import PreparedCase

    label = np.zeros((16, 16, 8), np.uint8)
    hu = np.zeros(label.shape, np.int16)
    label[blood] = 1
    hu[predicted] = 1500
    return PreparedCase(case_id, hu, label)


def _predict_marked(model, image, cfg):
    """Logits that call blood the voxels above 1,000 HU (the bone window's channel)."""
    blood = (image[:, 2] > (1000 - 600 + 1400) / 2800).float()
    return torch.stack([torch.zeros_like(blood), 10 * blood - 5], dim=1)


def test_validation_pools_the_voxels_so_false_blood_in_a_negative_scan_counts(tmp_path,
                                                                           monkeypatch):
    from ichseg.config import preset_config

    monkeypatch.setattr("ichseg.training.loop.window_logits", _predict_marked)
    cfg = preset_config("tiny")
    cfg.data.patch_size = [16, 16, 8]
    lesion = (slice(4, 6), slice(4, 6), slice(2, 4))  # 8 voxels
    hit = _case("hit", lesion, lesion)                # found exactly
    clean = _case("clean", (slice(0, 0),) * 3, (slice(0, 0),) * 3)
    false = _case("false", (slice(0, 0),) * 3, lesion)  # no blood, 8 voxels called blood
    trainer = Trainer(cfg, [hit], [hit, clean], tmp_path, 1)
    _, mean_dice, pooled = trainer.validate()
    assert (mean_dice, pooled) == (1.0, 1.0)
    trainer.val_cases = [hit, false]
    _, mean_dice, pooled = trainer.validate()
    # The mean of the cases counts the negative scan as one case; pooled, its 8 false voxels
    # weigh as much as the 8 found: 2 * 8 / (2 * 8 + 8).
    assert mean_dice == 0.5 and pooled == pytest.approx(2 / 3)
    missed = _case("missed", lesion, (slice(0, 0),) * 3)
    trainer.val_cases = [hit, missed, clean]
    assert trainer.validate()[2] == pytest.approx(2 / 3)  # 2 * 8 / (2 * 8 + 0 + 8)
    # The false blood lies outside the case's cranial cavity: predict drops it, and so does
    # validation, unless intracranial_only is off.
    false.cavity = np.ones(false.hu.shape, bool)
    false.cavity[lesion] = False
    trainer.val_cases = [hit, false]
    assert trainer.validate()[1:] == (1.0, 1.0)
    trainer.cfg.inference.intracranial_only = False
    assert trainer.validate()[1:] == (0.5, pytest.approx(2 / 3))


def test_history_keeps_legacy_columns_and_writes_csv(tmp_path):
    history = History()
    history.load_state_dict({"train_loss": [1.0, 0.5], "dice": [0.1, 0.2]})
    assert history.columns["epoch"] == [1, 2] and history.columns["dice"] == [0.1, 0.2]
    assert math.isnan(history.columns["val_loss"][0])
    history.append({"epoch": 3, "train_loss": 0.25, "val_loss": 0.3})
    history.write_csv(tmp_path / "history.csv")
    lines = (tmp_path / "history.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,train_loss,val_loss") and lines[0].endswith(",dice")
    assert lines[3].startswith("3,0.25,0.3")
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed over


def test_a_run_from_before_the_pooled_dice_continues_with_its_rule_and_network(
        tiny_dataset, tmp_path, monkeypatch):
    import yaml

    # The loss falls and so does the pooled Dice: by the pooled Dice the first epoch is best.
    monkeypatch.setattr(Trainer, "validate", lambda self: (
        1 / (self.progress.epoch + 2), 0.5, 1 / (self.progress.epoch + 2)))
    # An old run: BatchNorm (the only norm then), judged by its loss, with checkpoints and a
    # config.yaml that know neither the norm nor the rule.
    real_state_dict = Trainer.state_dict

    def old_state_dict(self):
        state = real_state_dict(self)
        for key in ("rule", "smoothed"):
            del state["early_stopping"][key]
        for key in ("select_by", "min_epochs", "score_smoothing"):
            del state["config"]["training"][key]
        del state["config"]["model"]["norm"]
        for key in ("val_pooled_dice", "val_pooled_dice_smoothed"):
            del state["history"][key]
        return state

    run = tmp_path / "old"
    with monkeypatch.context() as old_code:
        old_code.setattr(Trainer, "state_dict", old_state_dict)
        train(tiny_dataset, run, epochs=2, steps=1,
              sets=["model.norm=batch", "training.select_by=val_loss"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    for section, key in (("training", "select_by"), ("training", "min_epochs"),
                         ("training", "score_smoothing"), ("model", "norm")):
        del config[section][key]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert "rule" not in load_last(run)["early_stopping"]

    result = train(tiny_dataset, run, epochs=4, steps=1)
    assert (result.epochs_completed, result.best_epoch) == (4, 4)  # the lowest loss
    state = load_last(run)
    assert state["early_stopping"]["rule"] == "val_loss" and state["best_val"] == 1 / 5
    assert any(key.endswith("running_mean") for key in state["model_state"])  # still BatchNorm
    saved = ichseg.config.read_run_config(run / "config.yaml")
    assert (saved.model.norm, saved.training.select_by) == ("batch", "val_loss")
    pooled = state["history"]["val_pooled_dice"]
    assert all(math.isnan(v) for v in pooled[:2]) and pooled[2:] == [1 / 4, 1 / 5]


def test_a_legacy_checkpoint_of_a_batchnorm_network_keeps_its_norm_and_rule(tiny_dataset,
                                                                           tmp_path):
    from ichseg.config import preset_config
    from ichseg.models import build_model
    from ichseg.training.modes import plan_run

    cfg = preset_config("tiny")
    cfg.model.norm = "batch"
    legacy = {"model_state": build_model(cfg).state_dict(), "epoch": 2, "history": {},
              "best_val": 0.5, "no_improve": 0, "optimizer_state": {}, "scheduler_state": {},
              "scaler_state": None}
    torch.save(legacy, tmp_path / "colab.pt")
    plan = plan_run(tiny_dataset, tmp_path / "run", resume_from=tmp_path / "colab.pt",
                    **fast_options())
    assert (plan.cfg.model.norm, plan.cfg.training.select_by) == ("batch", "val_loss")
