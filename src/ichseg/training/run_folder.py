"""A run folder's own files (docs/CONTRACT.md, "Run folder"): their names, for whoever writes or
reads them (the trainer, `ichseg status`), and the reading of config.yaml and split.json that
tells a damaged file from a good one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ichseg.config import Config, config_from_dict, load_yaml
from ichseg.errors import UsageError

CONFIG_FILE = "config.yaml"
SPLIT_FILE = "split.json"
TRAIN_LOG = "train.log"
ARCHIVE = "archive"


def read_recorded_config(path: Path) -> tuple[Config | None, dict[str, Any] | None, str | None]:
    """The run's config.yaml: (config, its YAML, None); (None, None, None) when there is none;
    (None, None, why) when it is damaged (a kill during an old, non-atomic write; garbage)."""
    if not path.is_file():
        return None, None, None
    try:
        raw = load_yaml(path)
        return config_from_dict(raw, f"config file {path}"), raw, None
    except UsageError as exc:
        return None, None, str(exc)


def missing_keys(raw: dict[str, Any], stored: dict[str, Any]) -> str | None:
    """Why config.yaml is incomplete next to the config its run's checkpoint stores (written
    by the same version, so it has every key): a file truncated at a line end is still YAML."""
    missing = [f"{section}.{key}" if key else section
               for section, values in stored.items()
               for key in (values if isinstance(values, dict) else [None])
               if section not in raw or (key and key not in (raw[section] or {}))]
    if not missing:
        return None
    return f"it lacks {', '.join(missing[:3])}{' and more' if len(missing) > 3 else ''}"


def split_lists(split: dict[str, Any]) -> dict[str, Any]:
    """A split (from split.json or a checkpoint) with its case lists as lists; a fold run's
    split also says which fold it is (`fold`, `folds`)."""
    return {**split, "train": list(split["train"]), "validation": list(split["validation"])}


def read_split(path: Path) -> dict[str, list[str]]:
    try:
        return split_lists(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"split file {path} cannot be read: {exc}") from None
