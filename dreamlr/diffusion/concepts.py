"""Several concepts in one run: the `dataset` key (inline, or the path of a YAML file) lists subsets, each
with its own images, prompt, class prompt and class folder for prior preservation, `repeats` (how often its
views are drawn relative to a view of weight 1) and its own resolution and bucketing. Without `dataset` the
run has one subset made of the top-level keys."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from dreamlr.config_files import check_types
from dreamlr.errors import UserError


@dataclass(frozen=True)
class Subset:
    """One concept's training data."""

    instance_data_dir: str
    instance_prompt: str
    class_prompt: str | None = None
    class_data_dir: str | None = None
    repeats: int = 1
    resolution: int = 512
    bucket: bool = False


SUBSET_KEYS = tuple(f.name for f in fields(Subset))


def read_subsets(dataset: dict | str | None, top: dict[str, Any]) -> list[Subset]:
    """The run's subsets: from `dataset` ({subsets: [...]} or a YAML file holding it), each key defaulting to
    the top-level config's (`top`); without `dataset`, one subset of the top-level keys."""
    defaults = {key: top[key] for key in SUBSET_KEYS if key in top}
    if dataset is None:
        return [_subset({**defaults, "repeats": 1}, "config")]
    where = "dataset"
    if isinstance(dataset, str):
        path = Path(dataset).expanduser()
        where = f"dataset file '{path}'"
        try:
            dataset = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{where} does not exist; give a YAML file with a `subsets:` list") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{where} cannot be read as YAML ({reason})") from None
    if not isinstance(dataset, dict) or set(dataset) != {"subsets"} or not isinstance(dataset["subsets"], list) \
            or not dataset["subsets"]:
        raise UserError(f"{where} must hold exactly one key, `subsets`: a non-empty list of subsets "
                        f"(keys: {', '.join(SUBSET_KEYS)})")
    subsets = []
    for number, entry in enumerate(dataset["subsets"], start=1):
        here = f"{where}, subset {number}"
        if not isinstance(entry, dict):
            raise UserError(f"{here}: must be a mapping of {', '.join(SUBSET_KEYS)}")
        unknown = sorted(set(entry) - set(SUBSET_KEYS))
        if unknown:
            raise UserError(f"{here}: unknown key {unknown[0]!r}; subset keys: {', '.join(SUBSET_KEYS)}")
        if not entry.get("instance_data_dir"):
            raise UserError(f"{here}: instance_data_dir is not set")
        subsets.append(_subset({**defaults, "repeats": 1, **entry}, here))
    return subsets


def _subset(values: dict[str, Any], where: str) -> Subset:
    for key in ("instance_data_dir", "instance_prompt"):
        if not values.get(key):
            raise UserError(f"{where}: {key} is not set")
    try:
        subset = Subset(**values)
        check_types(subset)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    if Path(subset.instance_data_dir).expanduser().is_file():
        raise UserError(f"{where}: instance_data_dir '{subset.instance_data_dir}' is a file, not a folder")
    if subset.repeats < 1:
        raise UserError(f"{where}: repeats must be at least 1, got {subset.repeats}")
    if subset.resolution < 8 or subset.resolution % 8:
        raise UserError(f"{where}: resolution must be a positive multiple of 8, got {subset.resolution}")
    return subset
