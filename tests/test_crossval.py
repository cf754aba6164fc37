"""Cross-validation end to end: fold runs (`--fold K`), the cross-validation table against
evaluating each fold by hand, and ensembles (`predict --run A --run B`, a folder of runs).

Two folds of `data.folds=3` on the six tiny cases are trained once here (one epoch of two steps,
in this process); the third fold is left out, which the table must say.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from test_predict import one_thread  # noqa: F401 - the tiny networks' one-thread fixture
from trainrun import fast_options

import ichseg
from ichseg import api
from ichseg.cli import main
from ichseg.data.ct import preprocess_case
from ichseg.data.dicom import read_scan
from ichseg.data.io import read_label
from ichseg.errors import UsageError
from ichseg.inference.ensemble import load_models
from ichseg.inference.predict import class_probabilities
from ichseg.inference.predictor import load_predictor
from ichseg.training.modes import plan_run

FOLDS = ["data.folds=3"]
COMPARED = ("dice", "hd95", "hd_max", "nsd", "rvd", "volume_error_ml", "lesion_f1", "gt_ml",
            "pred_ml")


@pytest.fixture(scope="module")
def fold_runs(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/fold0 and runs/fold1, each its own run folder (read-only here)."""
    runs = tmp_path_factory.mktemp("folds") / "runs"
    for k in (0, 1):
        result = ichseg.train(tiny_dataset, runs / f"fold{k}", mode="new", epochs=1, fold=k,
                              **fast_options(sets=FOLDS))
        assert result.state == "finished"
    return runs


def _split(run: Path) -> dict:
    return json.loads((run / "split.json").read_text())


def test_each_fold_is_a_run_that_validates_on_its_own_part(tiny_dataset, fold_runs):
    cases = sorted(p.name.split(".")[0] for p in (tiny_dataset / "labels").iterdir())
    first, second = _split(fold_runs / "fold0"), _split(fold_runs / "fold1")
    assert (first["fold"], first["folds"], second["fold"]) == (0, 3, 1)
    assert len(first["validation"]) == len(second["validation"]) == 2
    assert set(first["validation"]).isdisjoint(second["validation"])
    for split in (first, second):
        assert sorted(split["train"] + split["validation"]) == cases
    # The fold is part of the run's config, so a continue keeps it without being told ...
    plan = plan_run(None, fold_runs / "fold1", additional_epochs=1)
    assert plan.split == second and plan.cfg.data.fold == 1
    # ... and refuses another one: its validation cases were trained on.
    with pytest.raises(UsageError, match="data.fold: 1 -> 2"):
        plan_run(None, fold_runs / "fold1", fold=2, additional_epochs=1)
    with pytest.raises(UsageError, match="data.fold 3 must lie between 0 and 2"):
        plan_run(tiny_dataset, fold_runs / "new", fold=3, **fast_options(sets=FOLDS))


def test_the_table_matches_evaluating_each_fold_by_hand(tiny_dataset, fold_runs, tmp_path):
    out = tmp_path / "cv"
    code = main(["crossval", str(fold_runs), "--out", str(out)])  # the folder of fold runs
    assert code == 0
    table = json.loads((out / "crossval.json").read_text())
    assert "2 of 3 folds" in table["note"]
    by_case = {row["case"]: row for row in table["cases"]}
    assert len(by_case) == 4
    for k in (0, 1):
        run = fold_runs / f"fold{k}"
        validation = _split(run)["validation"]
        gt = tmp_path / f"gt{k}"
        gt.mkdir()
        for case in validation:
            shutil.copy(tiny_dataset / "labels" / f"{case}.nii.gz", gt)
        api.predict(run, [tiny_dataset / "images" / f"{c}.nii.gz" for c in validation],
                    tmp_path / f"pred{k}", quiet=True)
        by_hand = api.evaluate(tmp_path / f"pred{k}", gt)
        assert sorted(r["case"] for r in by_hand["cases"]) == validation
        for row in by_hand["cases"]:
            assert by_case[row["case"]]["fold"] == f"fold_{k}"
            assert {n: by_case[row["case"]][n] for n in COMPARED} == {n: row[n] for n in COMPARED}
        assert table["folds"][f"fold_{k}"]["mean"] == by_hand["mean"]
    pooled = np.mean([row["dice"] for row in table["cases"]])
    assert table["mean"]["dice"] == pytest.approx(pooled)
    fold_means = [table["folds"][f"fold_{k}"]["mean"]["dice"] for k in (0, 1)]
    assert table["across_folds"]["mean"]["dice"] == pytest.approx(np.mean(fold_means))
    with (out / "crossval.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["fold"], r["case"]) for r in rows] == [(c["fold"], c["case"])
                                                      for c in table["cases"]]
    assert float(rows[0]["dice"]) == table["cases"][0]["dice"]
    assert (out / "crossval.png").stat().st_size > 0
    assert (out / "fold_0" / "metrics.json").is_file()
    # Two runs validating the same cases are not folds of one cross-validation.
    copy = shutil.copytree(fold_runs / "fold0", tmp_path / "copy")
    with pytest.raises(UsageError, match="validated by both"):
        api.crossval([fold_runs / "fold0", copy], tmp_path / "twice")
    assert not (tmp_path / "twice").exists()


def test_an_ensemble_of_two_identical_models_predicts_exactly_what_one_does(
        tiny_dataset, fold_runs, tmp_path):
    one = fold_runs / "fold0"
    twin = shutil.copytree(one, tmp_path / "twin")
    image = tiny_dataset / "images" / "synth_000.nii.gz"
    # Probabilities with test-time augmentation: bit for bit.
    single, pair = load_predictor(one), load_models([one, twin])
    assert len(pair.members) == 2
    channels, _, _ = preprocess_case(read_scan(image), None, single.cfg.data)
    assert np.array_equal(class_probabilities(single, channels, tta=True),
                          class_probabilities(pair, channels, tta=True))
    # Through the command, with the label map written.
    assert main(["predict", "--run", str(one), str(image), "--out", str(tmp_path / "a")]) == 0
    assert main(["predict", "--run", str(one), "--run", str(twin), str(image),
                 "--out", str(tmp_path / "b")]) == 0
    a = read_label(tmp_path / "a" / "synth_000.nii.gz").array
    b = read_label(tmp_path / "b" / "synth_000.nii.gz").array
    assert np.array_equal(a, b)
    voted = json.loads((tmp_path / "b" / "models.json").read_text())["models"]
    assert [m["run"] for m in voted] == [str(one), str(twin)]
    assert voted[0]["sha256"] == voted[1]["sha256"] and voted[0]["fold"] == 0


def test_a_folder_of_fold_runs_is_their_ensemble_and_members_must_agree(fold_runs, tmp_path):
    both = load_models(fold_runs)
    assert [m.cfg.data.fold for m in both.members] == [0, 1]
    checkpoint = fold_runs / "fold1" / "checkpoints" / "best.pt"
    assert load_models([str(checkpoint)]).source == checkpoint  # --checkpoint FILE still works
    state = torch.load(checkpoint, weights_only=True)
    state["config"]["data"]["windows"] = [[40.0, 80.0]] * 3
    other = tmp_path / "other.pt"
    torch.save(state, other)
    with pytest.raises(UsageError, match=r"other.pt cannot join an ensemble.*data.windows"):
        load_models([fold_runs / "fold0", other])
