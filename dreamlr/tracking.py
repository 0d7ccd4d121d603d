"""Experiment trackers beside metrics.jsonl: TensorBoard or Weights & Biases through accelerate's trackers
(`report_to`), logging the run's settings once, then loss, learning rate, gradient norm and step time every
step and the validation samples as images. The packages are optional extras."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from accelerate import Accelerator
from accelerate.utils import is_tensorboard_available, is_wandb_available
from PIL import Image

from dreamlr.errors import UserError

REPORT_TO = ("none", "tensorboard", "wandb")
_AVAILABLE = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
LOG_DIR = "logs"  # inside the run folder
PROJECT = "dreamlr"


def check_report_to(value: str) -> None:
    """A UserError when `value` is not a known tracker or its package is not installed."""
    if value not in REPORT_TO:
        raise UserError(f"unknown report_to {value!r}; choose one of {', '.join(REPORT_TO)}")
    if value != "none" and not _AVAILABLE[value]():
        raise UserError(f"report_to {value} needs the {value} package: pip install 'dreamlr[{value}]' "
                        "(or set report_to: none)")


def accelerator_options(report_to: str, run_dir: Path) -> dict[str, Any]:
    """Accelerator(...) keywords for the tracker: its name and where TensorBoard writes (run_dir/logs)."""
    if report_to == "none":
        return {}
    return {"log_with": report_to, "project_dir": str(run_dir / LOG_DIR)}


def start(accelerator: Accelerator, report_to: str, config: dict[str, Any]) -> None:
    """Open the tracker with the run's settings as hyperparameters (nested keys dotted, lists and null as text)."""
    if report_to != "none":
        accelerator.init_trackers(PROJECT, config=_flat(config))


def log_images(accelerator: Accelerator, report_to: str, images: list[Image.Image], step: int) -> None:
    """The validation samples of `step`, as one image group."""
    if report_to == "none" or not images:
        return
    tracker = accelerator.get_tracker(report_to, unwrap=False)
    if report_to == "tensorboard":
        tracker.log_images({"samples": np.stack([np.asarray(im.convert("RGB")) for im in images])}, step=step,
                           dataformats="NHWC")
    else:
        tracker.log_images({"samples": images}, step=step)


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[f"{prefix}{key}"] = value
        else:
            flat[f"{prefix}{key}"] = "null" if value is None else str(value)
    return flat
