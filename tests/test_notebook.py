"""The Colab notebook: in sync with its generator, and runnable top to bottom outside Colab.

The headless run executes notebooks/ichseg_colab.ipynb with nbclient in a fresh ipykernel, on the
`tiny` preset and the synthetic data the notebook makes itself, in a temporary folder, with the
form's own TRAINING_MODE, "continue": there is no checkpoint yet, so it must warn and start new
(the seed's third scenario). Then it simulates what a Colab user lives through: the runtime is
reset (the local run folder is gone), and the notebook's cells through the status are run again
with ADDITIONAL_EPOCHS 1, which must resume from the mirror (the stand-in for Google Drive) and
train exactly one more epoch (the second scenario). One epoch each keeps the test near a minute
of CPU time.
"""

from __future__ import annotations

import csv
import importlib.util
import re
import shutil
from pathlib import Path

import nbformat
import pytest
import torch

from ichseg import check_training_status
from ichseg.config import read_run_config
from ichseg.training.checkpoint import sha256_file
from ichseg.training.status import format_status

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "ichseg_colab.ipynb"
# A cold kernel imports torch and compiles the numba scan; two executions stay well below this.
CELL_TIMEOUT_S = 180


def _generator():
    spec = importlib.util.spec_from_file_location("make_colab_notebook",
                                                  NOTEBOOKS / "make_colab_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cell(notebook: nbformat.NotebookNode, cell_id: str) -> nbformat.NotebookNode:
    return next(cell for cell in notebook.cells if cell.get("id") == cell_id)


def _text(cell: nbformat.NotebookNode, stream: str = "stdout") -> str:
    """What a code cell printed to `stream` (log messages and progress bars go to stderr)."""
    return "".join(output.text for output in cell.outputs
                   if output.output_type == "stream" and output.name == stream)


def _images(cell: nbformat.NotebookNode) -> int:
    return sum("image/png" in output.get("data", {}) for output in cell.outputs)


def _widgets(cell: nbformat.NotebookNode) -> int:
    return sum("application/vnd.jupyter.widget-view+json" in output.get("data", {})
               for output in cell.outputs)


def _history_rows(run: Path) -> list[dict[str, str]]:
    with (run / "history.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _assert_status_printed(notebook: nbformat.NotebookNode, run: Path, epochs: int) -> None:
    """The status cell printed the run's status as `ichseg status` reads it now (up to the
    checkpoint list, whose ages change by the second): a finished run of `epochs` epochs."""
    status = check_training_status(run)
    assert (status["state"], status["epochs_completed"]) == ("finished", epochs)
    printed = _text(_cell(notebook, "status"))
    assert printed.split("checkpoints:")[0] == format_status(status).split("checkpoints:")[0]


def test_committed_notebook_is_the_generators_output_with_outputs_cleared():
    assert NOTEBOOK.read_text(encoding="utf-8") == _generator().render(), (
        "notebooks/ichseg_colab.ipynb differs from its generator: run "
        "`python notebooks/make_colab_notebook.py` and commit both")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.id


def test_every_form_field_is_a_colab_param_that_the_environment_can_override():
    source = _cell(nbformat.read(NOTEBOOK, as_version=4), "settings").source
    fields = re.findall(r"^([A-Z_]+) = .+#@param", source, flags=re.MULTILINE)
    assert {"TRAINING_MODE", "DATA_DIR", "RUN_DIR", "MIRROR_DIR", "EPOCHS", "ADDITIONAL_EPOCHS",
            "PRESET", "TIME_LIMIT"} <= set(fields)
    assert 'TRAINING_MODE = "continue"  #@param ["continue", "new"]' in source
    for name in fields:
        assert f'{name} = setting("{name}", {name})' in source, name


@pytest.fixture
def kernel_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `python3` kernelspec for this very interpreter, found first through JUPYTER_PATH, so the
    notebook runs against the package under test whatever kernels the machine has installed."""
    from ipykernel.kernelspec import install

    prefix = tmp_path / "jupyter"
    install(kernel_name="python3", prefix=str(prefix))
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    work = tmp_path / "work"
    monkeypatch.setenv("ICHSEG_NB_WORKDIR", str(work))
    monkeypatch.setenv("ICHSEG_NB_PRESET", "tiny")
    monkeypatch.setenv("ICHSEG_NB_SYNTHETIC_CASES", "4")
    monkeypatch.setenv("ICHSEG_NB_TIME_LIMIT", "")
    return work


def _execute(cwd: Path, through: str | None = None) -> nbformat.NotebookNode:
    """Run the notebook in a fresh kernel, all of it or its cells up to the one `through` names."""
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    if through is not None:
        ids = [cell.get("id") for cell in notebook.cells]
        notebook.cells = notebook.cells[:ids.index(through) + 1]
    NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def test_notebook_runs_headless_then_resumes_from_the_mirror_after_a_runtime_reset(
        kernel_environment: Path, monkeypatch: pytest.MonkeyPatch):
    work = kernel_environment
    run, mirror = work / "run", work / "drive" / "checkpoints"
    predictions = work / "drive" / "predictions"

    # Scenario 3: "continue" (the form's default) without any checkpoint starts a new run.
    monkeypatch.setenv("ICHSEG_NB_EPOCHS", "1")
    notebook = _execute(work.parent)

    assert "outside Colab" in _text(_cell(notebook, "install"))
    assert "not mounted" in _text(_cell(notebook, "mount-drive"))
    assert "TRAINING_MODE      'continue'" in _text(_cell(notebook, "settings"))
    assert "no checkpoint" in _text(_cell(notebook, "train"), "stderr").lower()
    assert "no problems found" in _text(_cell(notebook, "dataset-check"))
    cfg = read_run_config(run / "config.yaml")
    assert (cfg.preset, cfg.training.epochs) == ("tiny", 1)
    assert Path(cfg.data.path) == work / "synthetic-tiny" / "train"
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 1
    assert len(_history_rows(run)) == 1
    assert (run / "progress.png").read_bytes().startswith(b"\x89PNG")
    # The mirror holds the same bytes as the local run folder, checked by hash.
    assert sha256_file(mirror / "last.pt") == sha256_file(run / "checkpoints" / "last.pt")

    _assert_status_printed(notebook, run, epochs=1)
    assert _images(_cell(notebook, "progress-plot")) == 1
    held_out = sorted(p.name for p in (work / "synthetic-tiny" / "held-out" / "images").iterdir())
    assert sorted(p.name for p in predictions.glob("*.nii.gz")) == held_out
    # Every prediction has its viewer page; the first two are shown in the NiiVue widget, or as
    # their overlays where ipyniivue (ichseg[notebook]) is not installed.
    assert sorted(p.name for p in (predictions / "viewer").glob("*.html")) == [
        name.replace(".nii.gz", ".html") for name in held_out]
    predict = _cell(notebook, "predict")
    if importlib.util.find_spec("ipyniivue") is None:
        assert "no NiiVue widget" in _text(predict)
        assert _images(predict) == min(2, len(held_out))
    else:
        assert _widgets(predict) == min(2, len(held_out)) and _images(predict) == 0
    assert _images(_cell(notebook, "evaluate")) == 1
    assert (work / "drive" / "evaluation" / "metrics.json").is_file()

    # Scenario 2 on a fresh runtime: the local disk is empty, Drive still has the mirror. The
    # cells through the status are what a user reruns after a reset.
    shutil.rmtree(run)
    monkeypatch.setenv("ICHSEG_NB_EPOCHS", "0")
    monkeypatch.setenv("ICHSEG_NB_ADDITIONAL_EPOCHS", "1")
    notebook = _execute(work.parent, through="status")

    assert "finished: 2 of 2 epochs done" in _text(_cell(notebook, "train"))
    resumed = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["epoch"] == 2
    assert [row["epoch"] for row in _history_rows(run)] == ["1", "2"]
    # Epoch 1 is the one trained before the reset, not trained again.
    assert resumed["history"]["train_loss"][:1] == last["history"]["train_loss"]
    _assert_status_printed(notebook, run, epochs=2)
