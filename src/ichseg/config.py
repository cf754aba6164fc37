"""The one typed, validated configuration of a run.

A config is resolved once, in this order: the dataclass defaults, the preset (`tiny`, `small`,
`default`), a YAML file, `--set section.key=value` overrides, then the explicit CLI flags. The
resolved config is written whole to `RUN/config.yaml`; every other module reads its settings from
the `Config` object it is handed, never from anywhere else.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ichseg.errors import UsageError
from ichseg.fileio import atomic_write_text

PRESETS = ("tiny", "small", "default")
# The random transforms of training patches (`data.augmentations`), in the order their random
# streams are spawned: append new ones at the end, so that the others keep drawing what they drew.
AUGMENTATIONS = ("flip", "rotate", "scale", "brightness", "contrast", "gamma", "noise", "blur",
                 "low_resolution", "inverted_gamma")


def _choice(*values: str, doc: str = "") -> Any:
    return field(default=values[0], metadata={"choices": values, "doc": doc})


def _opt(default: Any, doc: str = "", minimum: float | None = None) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: copy.deepcopy(default),
                     metadata={"doc": doc, "min": minimum})
    return field(default=default, metadata={"doc": doc, "min": minimum})


@dataclass
class DataConfig:
    path: str = _opt("", "dataset folder (any layout of the contract)")
    layout: str = _choice("auto", "generic", "nnunet", "physionet", "instance", "bhsd",
                          doc="dataset layout; auto detects it")
    windows: list[list[float]] = _opt([[40.0, 80.0], [80.0, 200.0], [600.0, 2800.0]],
                                      "CT windows as [level, width] in HU, one input channel each")
    spacing: list[float] = _opt([0.45, 0.45, 5.0], "target voxel spacing in mm (x, y, z)", 0.01)
    patch_size: list[int] = _opt([192, 192, 32], "training patch in voxels (x, y, z)", 1)
    crop_to_head: bool = _opt(True, "crop each scan to the head's bounding box")
    foreground_fraction: float = _opt(0.33, "share of patches centred on hemorrhage", 0.0)
    outside_cavity_fraction: float = _opt(0.5, "share of the other patches centred on the head "
                                          "outside the cranial cavity (neck, face, scalp), where "
                                          "a case's cavity was found", 0.0)
    mimic_fraction: float = _opt(1.0, "share of the background patches left after those "
                                 "outside the cavity centred on unlabelled voxels inside it as "
                                 "dense as fresh blood, 50-100 HU (venous sinuses, the skull's "
                                 "partial-volume rim, falx)", 0.0)
    subtypes: bool = _opt(False, "train the five subtypes instead of any-hemorrhage")
    validation_fraction: float = _opt(0.2, "share of cases held out for validation", 0.0)
    stratify: bool = _opt(True, "hold out (and deal into folds) scans with and without "
                          "hemorrhage in proportion, so that validation judges false blood in "
                          "normal scans too; reads every label map once when a split is made")
    folds: int = _opt(5, "cross-validation folds that `--fold K` divides the cases into", 2)
    fold: int = _opt(-1, "the fold this run validates on (0 to folds - 1, `--fold K`); -1: no "
                     "folds, hold out validation_fraction instead", -1)
    group_by: str = _opt("", "regular expression finding the patient in a case id (its first "
                         "group, else the whole match): a patient's scans stay on one side of "
                         "the split; empty: the layout's or the files' patient, else the case")
    augment: bool = _opt(True, "random flips, rotations, scaling and intensity changes")
    augmentations: list[str] = _opt(list(AUGMENTATIONS), "the transforms data.augment applies, "
                                    "any of: " + ", ".join(AUGMENTATIONS))
    num_workers: int = _opt(-1, "processes preparing training batches ahead of the steps; -1: "
                            "auto (one per CPU but one, up to 8, on CUDA; 0 on a CPU, where "
                            "they would compete with the network for the cores)", -1)
    prepare_workers: int = _opt(-1, "processes decoding uncached scans into the cache; -1: one "
                                "per CPU, up to 4", -1)
    cache_dir: str = _opt("", "preprocessed-case cache; empty: $ICHSEG_CACHE or ~/.cache/ichseg")
    max_voxels: int = _opt(1024 * 1024 * 2000, "scans (and label maps) with more voxels are refused "
                           "from their headers before decoding, as too large to be a head CT "
                           "(the default, 1024 x 1024 x 2000, is 8 GiB as float32)", 1)


@dataclass
class ModelConfig:
    name: str = _choice("nnmamba", "dynunet", doc="network: nnMamba or MONAI's DynUNet baseline")
    spatial_dims: int = _opt(3, "2 or 3", 2)
    base_width: int = _opt(32, "channels after the stem (c); stages have 2c, 4c, 8c", 1)
    strides: list[list[int]] = _opt([[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2]],
                                    "per-axis strides of the stem, then of each stage", 1)
    blocks_per_stage: int = _opt(3, "residual blocks per stage", 1)
    deep_supervision: bool = _opt(True, "extra loss heads at 1/2, 1/4 and 1/8 resolution")
    d_state: int = _opt(16, "Mamba state size", 1)
    d_conv: int = _opt(4, "Mamba causal convolution width", 1)
    expand: int = _opt(2, "Mamba inner expansion", 1)
    scan_backend: str = _choice("auto", "reference", "cpu", "triton", "cuda",
                                doc="selective-scan implementation; auto: cpu on the CPU, on "
                                "CUDA mamba-ssm's kernel (cuda) where installed, else triton")
    norm: str = _choice("instance", "batch",
                        doc="normalisation: instance (every preset: steady with batches of two "
                        "patches) or batch (the nnMamba paper's exact network)")
    sync_batchnorm: bool = _opt(True, "with model.norm=batch under torchrun, normalise with the "
                                "global batch (SyncBatchNorm; GPUs only: PyTorch has none for "
                                "CPUs)")


@dataclass
class TrainingConfig:
    epochs: int = _opt(1000, "total epochs to reach", 1)
    batch_size: int = _opt(2, "global batch size (split across ranks)", 1)
    steps_per_epoch: int = _opt(250, "optimizer steps per epoch", 1)
    optimizer: str = _choice("sgd", "adamw", doc="optimizer")
    lr: float = _opt(1e-2, "peak learning rate", 0.0)
    min_lr: float = _opt(1e-4, "lowest learning rate of the cyclic schedule", 0.0)
    momentum: float = _opt(0.99, "SGD momentum", 0.0)
    nesterov: bool = _opt(True, "Nesterov momentum")
    weight_decay: float = _opt(3e-5, "weight decay (not on Mamba's A_log and D)", 0.0)
    scheduler: str = _choice("cyclic", "poly", "constant", doc="learning-rate schedule")
    cycle_epochs: int = _opt(10, "epochs per half cycle of the cyclic schedule", 1)
    grad_clip: float = _opt(12.0, "gradient norm clip; 0 turns it off", 0.0)
    amp: str = _choice("auto", "bf16", "fp16", "off",
                       doc="mixed precision on CUDA; auto is bf16 where supported; CPU is fp32")
    patience: int = _opt(50, "validations without improvement before stopping; 0 never", 0)
    min_epochs: int = _opt(100, "epochs always trained: patience counts only validations after "
                           "them (100: a tenth of the default target, well past the start where "
                           "the network predicts blood everywhere or nowhere and the pooled Dice "
                           "cannot improve)", 0)
    select_by: str = _choice("pooled_dice", "val_loss",
                             doc="what `best` and patience follow: pooled_dice, the any-hemorrhage "
                             "Dice of all validation voxels pooled (missed and false blood over "
                             "every scan), smoothed over validations; val_loss, the validation "
                             "loss (runs from before this setting)")
    score_smoothing: float = _opt(0.9, "weight of the past in the smoothed pooled Dice "
                                  "(smoothed = w * smoothed + (1 - w) * new; 0: no smoothing)", 0.0)
    validate_every: int = _opt(1, "validate every N epochs (and after the last); patience and "
                               "best count validations", 1)
    seed: int = _opt(0, "seed of every random draw", 0)
    device: str = _choice("auto", "cpu", "cuda", doc="where to train")
    deterministic: bool = _opt(False, "deterministic GPU algorithms, so that a stopped and "
                               "continued GPU run is bit-exact (slower; see BENCHMARKS.md); "
                               "off: cuDNN's autotuner picks the fastest convolutions")
    save_every_steps: int = _opt(0, "also save `last` every K steps; 0 turns it off", 0)
    save_every_minutes: float = _opt(10.0, "also save `last` every M minutes; 0 turns it off", 0.0)
    keep_checkpoints: int = _opt(3, "numbered generations kept", 1)
    time_limit: str = _opt("", "stop cleanly before this duration, like 90s, 45m, 11h30m "
                           "(this command only: a continue does not inherit it)")
    mirror_dir: str = _opt("", "folder (e.g. on Google Drive) that receives a copy of each checkpoint")
    init_from: str = _opt("", "checkpoint whose weights a new run started from (`--init-from`, "
                          "fine-tuning); layers that do not fit start fresh")
    init_from_sha256: str = _opt("", "SHA-256 of the init_from file when the run started")
    quiet: bool = _opt(False, "no progress bars")


@dataclass
class InferenceConfig:
    overlap: float = _opt(0.5, "sliding-window overlap", 0.0)
    sw_batch_size: int = _opt(-1, "sliding windows per forward pass (validation and predict); -1: "
                              "auto (4 on CUDA, 2 on a CPU); the logits do not depend on it", -1)
    blend: str = _choice("gaussian", "constant", doc="how overlapping windows are blended")
    tta: bool = _opt(False, "mirror test-time augmentation")
    checkpoint: str = _choice("best", "last", doc="which model of a run predicts")
    save_probabilities: bool = _opt(False, "also write the hemorrhage probability map")
    save_uncertainty: bool = _opt(False, "also write the per-voxel uncertainty map "
                                  "(1 - the winning class's probability)")
    unstable_agreement: float = _opt(0.8, "flag a case unstable when its TTA passes agree less "
                                     "(mean Dice of each pass with the prediction)", 0.0)
    unstable_volume_spread: float = _opt(0.25, "flag a case unstable when its TTA passes' volumes "
                                         "spread more than this share of their mean (at least "
                                         "1 mL)", 0.0)
    postprocess: bool = _opt(True, "choose connected-component postprocessing on the validation "
                             "cases when training ends, and apply the run's choice in predict")
    dicom_seg: bool = _opt(False, "also write a DICOM SEG object for each DICOM series predicted")
    intracranial_only: bool = _opt(True, "drop predicted voxels outside the cranial cavity found "
                                   "in each scan (neck, face, scalp); a scan where no skull is "
                                   "found keeps its prediction, with a warning")
    viewer: bool = _opt(True, "write each case's interactive viewer page (viewer/<case>.html, "
                        "the scan and labels embedded: about 72 MB for 512 x 512 x 300)")


@dataclass
class Config:
    preset: str = _choice("default", "small", "tiny", doc="the preset the config started from")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    @property
    def in_channels(self) -> int:
        return len(self.data.windows)

    @property
    def num_classes(self) -> int:
        """Output channels including background: 2 for any-hemorrhage, 6 with subtypes."""
        return 6 if self.data.subtypes else 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_yaml())


# Presets: differences from the dataclass defaults (which are the `default` preset, the nnMamba
# paper's network for a GPU). The CPU presets use coarse spacing, a strided stem and small widths,
# because full-resolution 3D convolutions dominate CPU time.
_PRESET_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "small": {
        # 2 mm in-plane and 64 x 64 x 16 patches (128 x 128 x 80 mm), z halved twice only: the
        # first Mamba stage sees 2,048 tokens instead of 18,432 at 1.8 mm and 96 x 96 x 32, which
        # made a CPU step about 5x faster (1.2 s against 6 s, measured side by side). Half the
        # patches are centred on hemorrhage, so a short CPU run sees enough of it.
        "data": {"spacing": [2.0, 2.0, 5.0], "patch_size": [64, 64, 16],
                 "foreground_fraction": 0.5},
        # Two blocks per stage (one MICCSS block): a third of the step time off on a CPU.
        "model": {"base_width": 8, "blocks_per_stage": 2,
                  "strides": [[2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]]},
        # AdamW at 3e-3: on the synthetic task the training loss left the all-background plateau
        # (about 1.0) after 13 epochs, where SGD at 1e-2 with momentum 0.99 still sat on it after
        # 5. Epochs of 40 steps: validating whole scans costs about nine steps, so at 20 steps it
        # took a third of the time; 18 epochs of 40 steps reached a held-out Dice of 0.81 where
        # 32 of 20 (about the same time) reached 0.80. The learning rate rises for 3 epochs and
        # falls for 3: it is lowest every 6, and at the last of 48.
        # 48 epochs: the demo's held-out scans without hemorrhage kept up to 6 mL of false blood
        # on one training seed of two at 24 epochs and of three at 36, on none of three at 48,
        # where the held-out Dice reached 0.80 on every seed. At 48 one seed of three still left
        # 1.4-2.3 mL on other normal phantoms (BENCHMARKS.md, "The main job").
        # At least 50 epochs before patience counts: a run given more epochs (on real scans, say)
        # is not judged early, long past the plateau at the start.
        "training": {"epochs": 48, "batch_size": 2, "steps_per_epoch": 40, "patience": 12,
                     "min_epochs": 50, "cycle_epochs": 3, "optimizer": "adamw", "lr": 3e-3,
                     "min_lr": 3e-4},
    },
    "tiny": {
        "data": {"spacing": [3.6, 3.6, 5.0], "patch_size": [32, 32, 16], "augment": False},
        "model": {"base_width": 4, "blocks_per_stage": 2, "d_state": 4},
        "training": {"epochs": 3, "batch_size": 2, "steps_per_epoch": 3, "patience": 5,
                     "cycle_epochs": 2, "save_every_minutes": 0.0},
    },
}

# Settings that may differ when a run is continued: they change neither the network nor the data
# it sees. Everything else is refused with the differing keys listed.
RESUMABLE_CHANGES = frozenset({
    "data.path", "data.num_workers", "data.prepare_workers", "data.cache_dir",
    "training.epochs", "training.patience", "training.min_epochs", "training.device", "training.save_every_steps",
    "training.validate_every", "training.save_every_minutes", "training.keep_checkpoints", "training.time_limit",
    "training.mirror_dir", "training.quiet",
}) | {f"inference.{f.name}" for f in dataclasses.fields(InferenceConfig)}


_SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig,
                              "training": TrainingConfig, "inference": InferenceConfig}


def _coerce(key: str, value: Any, hint: Any, meta: typing.Mapping[str, Any]) -> Any:
    """Convert `value` to the field's type (`hint`, resolved), or raise UsageError naming `key`."""
    origin = typing.get_origin(hint)
    if origin is list:
        (inner,) = typing.get_args(hint)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list) or not value:
            raise UsageError(f"setting {key} must be a non-empty list, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, inner, meta) for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UsageError(f"setting {key} must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (
                isinstance(value, str) and not re.fullmatch(r"-?\d+", value.strip())):
            raise UsageError(f"setting {key} must be a whole number, got {value!r}")
        value = int(value)
    elif hint is float:
        try:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"setting {key} must be a number, got {value!r}") from None
    elif hint is str:
        if value is None:
            value = ""
        if not isinstance(value, (str, int, float)):
            raise UsageError(f"setting {key} must be text, got {value!r}")
        value = str(value)
        choices = meta.get("choices")
        if choices and value not in choices:
            raise UsageError(f"setting {key} must be one of {', '.join(choices)}, got {value!r}")
        return value
    minimum = meta.get("min")
    if minimum is not None and value < minimum:
        raise UsageError(f"setting {key} must be at least {minimum}, got {value!r}")
    return value


def _apply(cfg: Config, overrides: typing.Mapping[str, Any], origin: str) -> None:
    """Apply a nested {section: {key: value}} mapping onto `cfg`, validating every key."""
    if not isinstance(overrides, typing.Mapping):
        raise UsageError(f"{origin} must hold a mapping of sections "
                         f"({', '.join(_SECTIONS)}), got {type(overrides).__name__}")
    for section, values in overrides.items():
        if section == "preset":
            continue
        if section not in _SECTIONS:
            raise UsageError(f"unknown config section {section!r} in {origin}; "
                             f"allowed: preset, {', '.join(_SECTIONS)}")
        if not isinstance(values, typing.Mapping):
            raise UsageError(f"config section {section} in {origin} must be a mapping of keys")
        target = getattr(cfg, section)
        fields = {f.name: f for f in dataclasses.fields(target)}
        # The annotations are strings (`from __future__ import annotations`); this resolves them.
        hints = typing.get_type_hints(type(target))
        for key, value in values.items():
            if key not in fields:
                raise UsageError(f"unknown setting {section}.{key} in {origin}; allowed in "
                                 f"{section}: {', '.join(fields)}")
            f = fields[key]
            setattr(target, key, _coerce(f"{section}.{key}", value, hints[key], f.metadata))


def parse_set(assignment: str) -> dict[str, dict[str, Any]]:
    """`section.key=value` (value read as YAML) -> {section: {key: value}}."""
    if "=" not in assignment:
        raise UsageError(f"--set {assignment!r} must look like section.key=value")
    dotted, raw = assignment.split("=", 1)
    if dotted.count(".") != 1:
        raise UsageError(f"--set {assignment!r} must name a key as section.key, "
                         f"with section one of {', '.join(_SECTIONS)}")
    section, key = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return {section: {key: value}}


def _validate(cfg: Config) -> None:
    dims = cfg.model.spatial_dims
    if dims not in (2, 3):
        raise UsageError(f"setting model.spatial_dims must be 2 or 3, got {dims}")
    for name, value in (("data.spacing", cfg.data.spacing), ("data.patch_size", cfg.data.patch_size)):
        if len(value) != 3:
            raise UsageError(f"setting {name} needs 3 values (x, y, z), got {len(value)}")
    for i, stride in enumerate(cfg.model.strides):
        if len(stride) != 3:
            raise UsageError(f"setting model.strides[{i}] needs 3 values (x, y, z), got {stride}")
    if len(cfg.model.strides) < 2:
        raise UsageError("setting model.strides needs the stem's stride and at least one stage's")
    for i, window in enumerate(cfg.data.windows):
        if len(window) != 2 or window[1] <= 0:
            raise UsageError(f"setting data.windows[{i}] must be [level, width] with width > 0, "
                             f"got {window}")
    if not 0.0 <= cfg.data.foreground_fraction <= 1.0:
        raise UsageError("setting data.foreground_fraction must lie between 0 and 1")
    for name in ("outside_cavity_fraction", "mimic_fraction"):
        if not 0.0 <= getattr(cfg.data, name) <= 1.0:
            raise UsageError(f"setting data.{name} must lie between 0 and 1")
    unknown = sorted(set(cfg.data.augmentations) - set(AUGMENTATIONS))
    if unknown:
        raise UsageError(f"setting data.augmentations names no transform {', '.join(unknown)}; "
                         f"allowed: {', '.join(AUGMENTATIONS)}")
    if not 0.0 <= cfg.data.validation_fraction < 1.0:
        raise UsageError("setting data.validation_fraction must lie in [0, 1)")
    if cfg.data.fold >= cfg.data.folds:
        raise UsageError(f"setting data.fold {cfg.data.fold} must lie between 0 and "
                         f"{cfg.data.folds - 1} (data.folds is {cfg.data.folds})")
    if not 0.0 <= cfg.inference.overlap < 1.0:
        raise UsageError("setting inference.overlap must lie in [0, 1)")
    if cfg.inference.sw_batch_size == 0:
        raise UsageError("setting inference.sw_batch_size must be at least 1, or -1 for auto")
    if not cfg.training.score_smoothing < 1.0:
        raise UsageError("setting training.score_smoothing must lie in [0, 1)")
    if cfg.training.time_limit:
        parse_duration(cfg.training.time_limit, "training.time_limit")


def preset_config(preset: str) -> Config:
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    cfg = Config(preset=preset)
    _apply(cfg, _PRESET_OVERRIDES[preset], f"preset {preset}")
    return cfg


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"config file {path} is not valid YAML: "
                         f"{str(exc).splitlines()[0]}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(f"config file {path} must hold a mapping of sections")
    return loaded


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   sets: typing.Iterable[str] = (),
                   overrides: typing.Mapping[str, typing.Mapping[str, Any]] | None = None,
                   base: Config | None = None) -> Config:
    """Resolve a config: base (or preset, or the file's preset) <- file <- --set <- overrides.

    `base` is a config read back from a run folder: on `continue` the saved config is the
    starting point and only what the user gives again is laid over it.
    """
    file_values = load_yaml(config_file) if config_file else {}
    if base is not None:
        cfg = copy.deepcopy(base)
        if preset and preset != cfg.preset:
            fresh = preset_config(preset)
            _apply(cfg, {s: dataclasses.asdict(getattr(fresh, s)) for s in _SECTIONS}, "preset")
            cfg.preset = preset
    else:
        chosen = preset or file_values.get("preset") or "default"
        cfg = preset_config(str(chosen))
    if file_values:
        _apply(cfg, file_values, f"config file {config_file}")
    for assignment in sets:
        _apply(cfg, parse_set(assignment), f"--set {assignment}")
    if overrides:
        _apply(cfg, {k: v for k, v in overrides.items() if v}, "the command line")
    _validate(cfg)
    return cfg


# Settings added after runs had been saved, with the value that a saved config lacking them
# meant then: such a run goes on with its network (BatchNorm was the only norm), its rule and its
# transforms (the first seven; their random draws and the scaling range did change with them).
_BEFORE_THE_SETTING: dict[str, dict[str, Any]] = {
    "data": {"outside_cavity_fraction": 0.0, "mimic_fraction": 0.0, "stratify": False,
             "augmentations": list(AUGMENTATIONS[:AUGMENTATIONS.index("blur")])},
    "model": {"norm": "batch", "sync_batchnorm": False},
    "training": {"select_by": "val_loss", "min_epochs": 0},
}


def config_from_dict(values: typing.Mapping[str, Any], origin: str = "saved config") -> Config:
    """Rebuild a Config from `to_dict()` output (config.yaml or a checkpoint's `config`); keys
    it lacks take the preset's values, or what they meant before the setting existed."""
    cfg = preset_config(str(values.get("preset", "default")))
    _apply(cfg, _BEFORE_THE_SETTING, origin)
    _apply(cfg, values, origin)
    _validate(cfg)
    return cfg


def read_run_config(path: str | Path) -> Config:
    return config_from_dict(load_yaml(path), f"config file {path}")


def flatten(cfg: Config) -> dict[str, Any]:
    flat: dict[str, Any] = {"preset": cfg.preset}
    for section in _SECTIONS:
        for key, value in dataclasses.asdict(getattr(cfg, section)).items():
            flat[f"{section}.{key}"] = value
    return flat


def config_differences(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    a, b = flatten(old), flatten(new)
    return [k for k in a if a[k] != b.get(k)]


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?"
                       r"(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str, name: str = "--time-limit") -> float:
    """`90s`, `45m`, `11h30m`, `1d2h`, or plain seconds -> seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    match = _DURATION.fullmatch(text)
    if not text or not match or not any(match.groups()):
        raise UsageError(f"{name} {text!r} is not a duration like 90s, 45m or 11h30m")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
