"""Write notebooks/ichseg_colab.ipynb, the Colab notebook, from the cell sources below.

    python notebooks/make_colab_notebook.py

The .ipynb is committed with its outputs cleared; edit the cells here, run this script, and commit
both files (tests/test_notebook.py fails when they drift apart). Cell ids are fixed so that the
file only changes where a cell does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOK = Path(__file__).with_name("ichseg_colab.ipynb")

# Where Colab opens the notebook from: a placeholder until the repository's address is known.
REPOSITORY = "YOUR-ACCOUNT/ichseg"

TITLE = f"""\
# ichseg on Google Colab: train an nnMamba U-Net for intracranial hemorrhage, and never lose work

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/{REPOSITORY}/blob/main/notebooks/ichseg_colab.ipynb)

Run the cells from top to bottom (*Runtime → Run all*). There is **one switch**, `TRAINING_MODE`
in the settings form:

| You want to | Set | What happens |
|---|---|---|
| **1. Train for the first time** | `TRAINING_MODE = "new"`, `EPOCHS` = the total | starts at epoch 1 (an earlier run in `RUN_DIR` is moved to `RUN_DIR/archive/`, never deleted) |
| **2. Go on after Colab disconnected or timed out** | `TRAINING_MODE = "continue"`, `ADDITIONAL_EPOCHS` = how many more (or `EPOCHS` = the new total) | resumes from the newest valid checkpoint, on the local disk or on Drive, at the exact batch where it stopped: from the checkpoint of epoch 1500, `ADDITIONAL_EPOCHS = 1000` trains epochs 1501 to 2500 |
| **3. Continue, but there is no checkpoint yet** | `TRAINING_MODE = "continue"` | warns that there is nothing to resume and starts a new run (no crash) |

`continue` is the default, so after any interruption the answer is always the same: reconnect,
*Run all*.

**Why nothing is lost.** Checkpoints are written to the runtime's fast local disk first and copied
to Google Drive (`MIRROR_DIR`) in the background; a copy counts only once it has been read back
from Drive and its SHA-256 matches. A fresh runtime, whose local disk is empty, resumes from the
copy on Drive. Interrupting the training cell (■) stops it cleanly after saving a checkpoint, and
`TIME_LIMIT` stops it cleanly before Colab's own limit.

Outside Colab the notebook runs as is: Drive is not mounted, a local folder stands in for it, and
it trains on synthetic head CTs that it makes itself."""

INSTALL = '''\
# Install ichseg. In Colab, pip installs it from ICHSEG_SOURCE: set that to your copy of the
# repository (or a wheel's URL). Colab's own CUDA build of torch is kept. Where ichseg already
# imports (your own machine, or a second run of this cell) nothing is installed.
import importlib
import importlib.util
import subprocess
import sys

IN_COLAB = "google.colab" in sys.modules
ICHSEG_SOURCE = "git+https://github.com/YOUR-ACCOUNT/ichseg.git"  # <- set this
# The selective scan runs on the GPU as Triton kernels (Triton comes with Colab's PyTorch), so
# nothing is compiled. mamba-ssm's fused CUDA kernel is optional: what it adds over Triton is yet
# to be measured (see BENCHMARKS.md), and where no prebuilt wheel matches Colab's torch it
# compiles for 10 minutes or more.
INSTALL_MAMBA_KERNEL = False

if importlib.util.find_spec("ichseg") is None:
    if "YOUR-ACCOUNT" in ICHSEG_SOURCE:
        raise RuntimeError("ichseg is not installed: set ICHSEG_SOURCE in this cell to the "
                           "repository or wheel to install it from, then run the cell again")
    # notebook: ipyniivue, the viewer the predictions are shown in.
    extra = "[notebook,cuda]" if INSTALL_MAMBA_KERNEL else "[notebook]"
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet",
                           f"ichseg{extra} @ {ICHSEG_SOURCE}"])
    importlib.invalidate_caches()

import torch  # noqa: E402

import ichseg  # noqa: E402

print(f"ichseg {ichseg.__version__}, {'in Colab' if IN_COLAB else 'outside Colab'}")
if torch.cuda.is_available():
    from ichseg.models.ssm import resolve_backend

    print(f"GPU: {torch.cuda.get_device_name(0)}, selective scan: "
          f"{resolve_backend('auto', 'cuda')}")
elif IN_COLAB:
    print("No GPU: choose Runtime > Change runtime type > GPU, or training will be very slow")'''

MOUNT = '''\
# Google Drive holds the checkpoint mirror (and the predictions), which outlive the runtime.
if IN_COLAB:
    from google.colab import drive

    drive.mount("/content/drive")
else:
    print("Not in Colab: Google Drive is not mounted; a local folder stands in for it.")'''

FORM = '''\
#@title Settings { display-mode: "form" }
#@markdown **The one switch.** `continue`: resume the newest valid checkpoint (local or on Drive); without one, start new. `new`: move any earlier run aside to `archive/` and start at epoch 1.
TRAINING_MODE = "continue"  #@param ["continue", "new"]
#@markdown Folders. Empty: the defaults printed below. `DATA_DIR` is any layout ichseg reads (PhysioNet CT-ICH, INSTANCE 2022, BHSD, nnU-Net, `images/` + `labels/`); empty: synthetic head CTs made by this notebook. `RUN_DIR` is best on the fast local disk, `MIRROR_DIR` on Drive.
DATA_DIR = ""  #@param {type:"string"}
RUN_DIR = ""  #@param {type:"string"}
MIRROR_DIR = ""  #@param {type:"string"}
#@markdown Held-out cases to predict (NIfTI files, a folder of them, or a DICOM series folder) and, optionally, their ground-truth labels to evaluate against.
HELD_OUT_IMAGES = ""  #@param {type:"string"}
HELD_OUT_LABELS = ""  #@param {type:"string"}
#@markdown `EPOCHS`: the total to reach (0: the preset's). `ADDITIONAL_EPOCHS`: that many more than the checkpoint has done (0: use `EPOCHS`).
EPOCHS = 0  #@param {type:"integer"}
ADDITIONAL_EPOCHS = 0  #@param {type:"integer"}
#@markdown `small` learns the synthetic task in minutes; `default` is the paper's network, for a GPU and a real dataset; `tiny` is for tests.
PRESET = "small"  #@param ["tiny", "small", "default"]
#@markdown Stop cleanly, checkpoint saved, after this long (like `45m` or `11h30m`; empty: no limit).
TIME_LIMIT = "11h30m"  #@param {type:"string"}
#@markdown Synthetic training cases to make when `DATA_DIR` is empty.
SYNTHETIC_CASES = 24  #@param {type:"integer"}

import os  # noqa: E402
from pathlib import Path  # noqa: E402


def setting(name, value):
    """The form's value, unless the environment sets ICHSEG_NB_<NAME> (scripts and tests)."""
    text = os.environ.get(f"ICHSEG_NB_{name}")
    return value if text is None else type(value)(text)


TRAINING_MODE = setting("TRAINING_MODE", TRAINING_MODE)
DATA_DIR = setting("DATA_DIR", DATA_DIR)
RUN_DIR = setting("RUN_DIR", RUN_DIR)
MIRROR_DIR = setting("MIRROR_DIR", MIRROR_DIR)
HELD_OUT_IMAGES = setting("HELD_OUT_IMAGES", HELD_OUT_IMAGES)
HELD_OUT_LABELS = setting("HELD_OUT_LABELS", HELD_OUT_LABELS)
EPOCHS = setting("EPOCHS", EPOCHS)
ADDITIONAL_EPOCHS = setting("ADDITIONAL_EPOCHS", ADDITIONAL_EPOCHS)
PRESET = setting("PRESET", PRESET)
TIME_LIMIT = setting("TIME_LIMIT", TIME_LIMIT)
SYNTHETIC_CASES = setting("SYNTHETIC_CASES", SYNTHETIC_CASES)

# WORK: fast disk that a runtime reset wipes. KEEP: what must outlive it (Drive in Colab).
WORK = Path(setting("WORKDIR", "/content/ichseg" if IN_COLAB else "ichseg_colab")).absolute()
KEEP = Path("/content/drive/MyDrive/ichseg") if IN_COLAB else WORK / "drive"
SYNTHETIC = not DATA_DIR
if SYNTHETIC:
    DATA_DIR = str(WORK / f"synthetic-{PRESET}" / "train")
    HELD_OUT_IMAGES = str(WORK / f"synthetic-{PRESET}" / "held-out" / "images")
    HELD_OUT_LABELS = str(WORK / f"synthetic-{PRESET}" / "held-out" / "labels")
RUN_DIR = RUN_DIR or str(WORK / "run")
MIRROR_DIR = MIRROR_DIR or str(KEEP / "checkpoints")
PREDICTIONS_DIR = str(KEEP / "predictions")
EVALUATION_DIR = str(KEEP / "evaluation")
if EPOCHS and ADDITIONAL_EPOCHS:
    print(f"ADDITIONAL_EPOCHS = {ADDITIONAL_EPOCHS} is set, so EPOCHS = {EPOCHS} is not used")

for name in ("TRAINING_MODE", "PRESET", "EPOCHS", "ADDITIONAL_EPOCHS", "TIME_LIMIT", "DATA_DIR",
             "RUN_DIR", "MIRROR_DIR", "HELD_OUT_IMAGES", "HELD_OUT_LABELS", "PREDICTIONS_DIR"):
    print(f"{name:<18} {globals()[name]!r}")'''

SYNTH = '''\
# Without a DATA_DIR, make the data: synthetic head CTs with hemorrhages of the five subtypes, a
# training set and a held-out set. They are deterministic (fixed seeds), so a fresh runtime makes
# the very same cases again and a run on them can continue. Each preset gets scans at a field of
# view of 230 mm and a resolution it trains at without much resampling.
SYNTHETIC_GEOMETRY = {"tiny": ((64, 64, 24), (3.6, 3.6, 5.0)),
                      "small": ((256, 256, 32), (0.9, 0.9, 5.0)),
                      "default": ((512, 512, 32), (0.45, 0.45, 5.0))}

if SYNTHETIC:
    shape, spacing = SYNTHETIC_GEOMETRY[PRESET]
    held_out = Path(HELD_OUT_IMAGES).parent
    for folder, cases, seed in ((Path(DATA_DIR), SYNTHETIC_CASES, 0),
                                (held_out, max(2, SYNTHETIC_CASES // 4), 1)):
        if not (folder / "dataset.json").exists():
            ichseg.synthesize(folder, cases, seed=seed, shape=shape, spacing=spacing)
        print(f"{folder}: {len(list((folder / 'images').glob('*.nii.gz')))} synthetic cases")
else:
    print(f"using the dataset in {DATA_DIR}")'''

INSPECT = '''\
# Check the dataset before spending GPU hours on it: every case readable, labels on the image's
# grid, allowed label values; shapes, spacings and HU statistics.
from ichseg.data.inspect import format_fingerprint
from ichseg.errors import UsageError

fingerprint = ichseg.inspect(DATA_DIR)
print(format_fingerprint(fingerprint))
if fingerprint["problems"]:
    raise UsageError(f"dataset {DATA_DIR} has problems; the first: {fingerprint['problems'][0]}")'''

TRAIN_INTRO = """\
## Train

A progress bar per epoch; the run's log goes to `RUN_DIR/train.log`. To stop, interrupt the cell
(■ or *Runtime → Interrupt execution*): the checkpoint is saved first. To go on later, run the
notebook again with `TRAINING_MODE = "continue"`. Note that `ADDITIONAL_EPOCHS` counts from the
checkpoint each time the cell runs; to aim at the same end after several interruptions, give the
total as `EPOCHS` instead."""

TRAIN = '''\
def train_with(mode, preset, epochs=0, additional_epochs=0):
    """Train in RUN_DIR, checkpoints mirrored to MIRROR_DIR; 0 epochs means "not given"."""
    if epochs < 0 or additional_epochs < 0:
        raise UsageError("EPOCHS and ADDITIONAL_EPOCHS must be 0 (not given) or more")
    result = ichseg.train(
        DATA_DIR, RUN_DIR, mode=mode, preset=preset,
        epochs=None if additional_epochs or not epochs else epochs,
        additional_epochs=additional_epochs or None,
        time_limit=TIME_LIMIT or None, mirror_dir=MIRROR_DIR or None, quiet=False)
    print(f"{result.state}: {result.epochs_completed} of {result.target_epochs} epochs done")
    return result


result = train_with(TRAINING_MODE, PRESET, EPOCHS, ADDITIONAL_EPOCHS)'''

STATUS = '''\
# Where the run stands: state, epochs done, best validation epoch, the checkpoints with their
# checksum verdicts, and the command that continues it.
from ichseg.training.status import format_status

print(format_status(ichseg.check_training_status(RUN_DIR)))'''

PLOT = '''\
# Loss, validation Dice and learning rate per epoch; dashed lines mark where a run was stopped
# and continued.
from IPython.display import Image, display

progress_png = Path(RUN_DIR) / "progress.png"
if progress_png.exists():
    display(Image(filename=str(progress_png)))
else:
    print(f"no {progress_png} yet: no epoch has finished in this run folder")'''

PREDICT = '''\
# Segment the held-out cases with the best model of the run: label maps on each input's own grid,
# hemorrhage volumes in mL (PREDICTIONS_DIR/volumes.csv), an overlay per case and a viewer page
# per case (PREDICTIONS_DIR/index.html links them: download the folder and open it). The first two
# cases are shown here in NiiVue (scroll with the wheel, click to move the crosshair), or as their
# overlays where the widget cannot load (ipyniivue not installed).
if HELD_OUT_IMAGES:
    predictions = ichseg.predict(RUN_DIR, [HELD_OUT_IMAGES], PREDICTIONS_DIR)
    try:
        from ichseg.viz.viewer import notebook_viewer

        if IN_COLAB:  # Colab shows widgets from outside its own set only when asked to
            from google.colab import output

            output.enable_custom_widget_manager()
        viewers = [notebook_viewer(prediction["viewer"]) for prediction in predictions[:2]]
    except ImportError as exc:
        print(f"no NiiVue widget ({exc}): the overlays instead")
        viewers = [None] * len(predictions[:2])
    for prediction, viewer in zip(predictions[:2], viewers):
        print(f"{prediction['case']}: hemorrhage {prediction['hemorrhage_ml']:.2f} mL")
        if viewer is not None:
            display(viewer)
        else:
            display(Image(filename=str(Path(PREDICTIONS_DIR) / "overlays" /
                                       f"{prediction['case']}.png")))
else:
    print("set HELD_OUT_IMAGES in the form to predict held-out cases")'''

EVALUATE = '''\
# Compare the predictions with the ground truth: Dice, HD95, NSD, volume error and lesion F1 per
# case, with the mean and median.
from ichseg.evaluation.evaluate import format_summary

if HELD_OUT_IMAGES and HELD_OUT_LABELS:
    evaluation = ichseg.evaluate(PREDICTIONS_DIR, HELD_OUT_LABELS, EVALUATION_DIR)
    print(format_summary(evaluation))
    display(Image(filename=str(Path(EVALUATION_DIR) / "metrics.png")))
else:
    print("set HELD_OUT_LABELS in the form to evaluate the predictions")'''

PANEL_INTRO = """\
## Optional: the same choices as a panel

Where ipywidgets is installed (it is in Colab), this panel trains with the choices made in it,
using the folders of the form above."""

PANEL = '''\
try:
    import ipywidgets as widgets
except ImportError:
    widgets = None
    print("ipywidgets is not installed: use the settings form above")

if widgets is not None:
    mode_choice = widgets.ToggleButtons(options=["continue", "new"], value=TRAINING_MODE,
                                        description="mode")
    preset_choice = widgets.Dropdown(options=["tiny", "small", "default"], value=PRESET,
                                     description="preset")
    epochs_choice = widgets.BoundedIntText(value=EPOCHS, min=0, max=1_000_000,
                                           description="epochs")
    additional_choice = widgets.BoundedIntText(value=ADDITIONAL_EPOCHS, min=0, max=1_000_000,
                                               description="additional")
    train_button = widgets.Button(description="Train", button_style="primary", icon="play")
    panel_output = widgets.Output()

    def on_train(_button):
        train_button.disabled = True
        with panel_output:
            panel_output.clear_output()
            try:
                train_with(mode_choice.value, preset_choice.value, epochs_choice.value,
                           additional_choice.value)
                print(format_status(ichseg.check_training_status(RUN_DIR)))
            finally:
                train_button.disabled = False

    train_button.on_click(on_train)
    display(widgets.VBox([mode_choice, preset_choice, epochs_choice, additional_choice,
                          train_button, panel_output]))'''

# (cell id, kind, source, cell metadata)
CELLS = [
    ("title", "markdown", TITLE, {}),
    ("install", "code", INSTALL, {}),
    ("mount-drive", "code", MOUNT, {}),
    ("settings", "code", FORM, {"cellView": "form"}),
    ("synthetic-data", "code", SYNTH, {}),
    ("dataset-check", "code", INSPECT, {}),
    ("train-intro", "markdown", TRAIN_INTRO, {}),
    ("train", "code", TRAIN, {}),
    ("status", "code", STATUS, {}),
    ("progress-plot", "code", PLOT, {}),
    ("predict", "code", PREDICT, {}),
    ("evaluate", "code", EVALUATE, {}),
    ("panel-intro", "markdown", PANEL_INTRO, {}),
    ("panel", "code", PANEL, {}),
]


def build_notebook() -> nbformat.NotebookNode:
    """The notebook, outputs cleared, with Colab's metadata (GPU runtime, form cells)."""
    cells = []
    for cell_id, kind, source, metadata in CELLS:
        make = new_code_cell if kind == "code" else new_markdown_cell
        cells.append(make(source=source, id=cell_id, metadata=dict(metadata)))
    notebook = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4", "toc_visible": True},
    })
    nbformat.validate(notebook)
    return notebook


def render() -> str:
    """The notebook file's exact text."""
    return nbformat.writes(build_notebook()) + "\n"


def main() -> int:
    NOTEBOOK.write_text(render(), encoding="utf-8")
    print(f"wrote {NOTEBOOK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
