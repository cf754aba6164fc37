"""The one config: presets, YAML, --set, validation messages, differences and durations."""

from __future__ import annotations

import pytest
import yaml

from ichseg.config import (
    RESUMABLE_CHANGES,
    config_differences,
    config_from_dict,
    parse_duration,
    preset_config,
    read_run_config,
    resolve_config,
)
from ichseg.errors import UsageError


def test_presets_differ_where_cpu_needs_it():
    tiny, small, default = (preset_config(p) for p in ("tiny", "small", "default"))
    assert default.model.base_width == 32
    assert tiny.model.base_width < small.model.base_width < default.model.base_width
    assert tiny.data.spacing[0] > small.data.spacing[0] > default.data.spacing[0]
    assert tiny.in_channels == 3 and tiny.num_classes == 2


def test_resolution_order_file_then_set_then_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"preset": "small",
                                        "training": {"lr": 0.5, "seed": 3, "epochs": 7}}))
    cfg = resolve_config(config_file=cfg_file, sets=["training.lr=0.25", "data.subtypes=true"],
                         overrides={"training": {"seed": 9}})
    assert cfg.preset == "small"
    assert cfg.training.lr == 0.25          # --set beats the file
    assert cfg.training.seed == 9           # explicit flags beat --set
    assert cfg.training.epochs == 7         # the file beats the preset
    assert cfg.num_classes == 6


def test_saved_config_round_trips(tmp_path):
    cfg = resolve_config("tiny", sets=["model.strides=[[2,2,1],[2,2,2]]", "training.time_limit=1h"])
    path = tmp_path / "config.yaml"
    cfg.save(path)
    again = read_run_config(path)
    assert again == cfg
    assert config_from_dict(cfg.to_dict()) == cfg


def test_every_preset_trains_with_instance_norm_and_judges_the_pooled_dice():
    for preset in ("tiny", "small", "default"):
        cfg = preset_config(preset)
        assert (cfg.model.norm, cfg.training.select_by) == ("instance", "pooled_dice"), preset
    assert resolve_config("default", sets=["model.norm=batch"]).model.norm == "batch"
    assert preset_config("default").training.min_epochs > preset_config("default").training.patience


def test_a_saved_config_from_before_a_setting_keeps_what_it_meant():
    for preset in ("tiny", "small", "default"):
        saved = preset_config(preset).to_dict()
        for section, key in (("model", "norm"), ("model", "sync_batchnorm"),
                             ("training", "select_by"), ("training", "min_epochs"),
                             ("data", "outside_cavity_fraction"), ("data", "mimic_fraction"),
                             ("data", "stratify"), ("data", "augmentations")):
            del saved[section][key]
        old = config_from_dict(saved)
        assert (old.model.norm, old.model.sync_batchnorm) == ("batch", False), preset
        # The transforms it trained with: none of the three that came with the setting.
        assert old.data.augmentations == ["flip", "rotate", "scale", "brightness", "contrast",
                                          "gamma", "noise"], preset
        assert (old.data.outside_cavity_fraction, old.data.mimic_fraction) == (0.0, 0.0), preset
        assert old.data.stratify is False, preset
        assert (old.training.select_by, old.training.min_epochs) == ("val_loss", 0), preset
    # A saved config that names them keeps its own values.
    assert config_from_dict(preset_config("small").to_dict()) == preset_config("small")


@pytest.mark.parametrize("assignment, words", [
    ("training.nope=1", ["training.nope", "allowed", "epochs"]),
    ("training.lr=fast", ["training.lr", "number"]),
    ("model.name=unet", ["model.name", "nnmamba", "dynunet"]),
    ("training.epochs=0", ["training.epochs", "at least 1"]),
    ("training.epochs=2.5", ["training.epochs", "whole number"]),
    ("data.spacing=[1,2]", ["data.spacing", "3 values"]),
    ("data.windows=[[40,-1]]", ["data.windows[0]", "width"]),
    ("stuff.x=1", ["stuff", "allowed"]),
    ("lr=1", ["section.key"]),
    ("training.time_limit=soon", ["training.time_limit", "duration"]),
    ("training.score_smoothing=1", ["training.score_smoothing", "[0, 1)"]),
    ("training.select_by=dice", ["training.select_by", "pooled_dice", "val_loss"]),
])
def test_bad_settings_name_the_key(assignment, words):
    with pytest.raises(UsageError) as err:
        resolve_config("tiny", sets=[assignment])
    message = str(err.value)
    for word in words:
        assert word in message
    assert "\n" not in message


def test_bad_config_file_is_named(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("training: [unclosed")
    with pytest.raises(UsageError, match="broken.yaml"):
        resolve_config(config_file=broken)
    with pytest.raises(UsageError, match="missing.yaml"):
        resolve_config(config_file=tmp_path / "missing.yaml")


def test_differences_and_harmless_keys():
    old = preset_config("tiny")
    new = resolve_config("tiny", sets=["training.epochs=9", "model.base_width=8",
                                       "data.num_workers=2"])
    diff = config_differences(old, new)
    assert sorted(diff) == ["data.num_workers", "model.base_width", "training.epochs"]
    assert [k for k in diff if k not in RESUMABLE_CHANGES] == ["model.base_width"]


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("45m", 2700), ("11h30m", 41400),
                                           ("1d", 86400), ("2.5h", 9000), ("120", 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "10x", "1m2h", "-5m"])
def test_bad_durations(text):
    with pytest.raises(UsageError, match="duration"):
        parse_duration(text)
