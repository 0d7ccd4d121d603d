"""Checks of command-line arguments that several commands share, run before any model loads."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from dreamlr.errors import UserError


def check_finite(args: argparse.Namespace, *names: str) -> None:
    """Every float flag named must be a finite number (argparse's float() takes `nan` and `inf`)."""
    for name in names:
        value = getattr(args, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


def check_input_folders(flag: str, paths: list[str]) -> None:
    """Folders given on the command line must not be files (which would otherwise read as missing)."""
    for path in paths:
        if Path(path).expanduser().is_file():
            raise UserError(f"{flag} '{path}' is a file, not a folder; give the folder that holds the images")


def check_output_file(path: str, flag: str, example: str) -> None:
    """An output that is a file must not name an existing folder."""
    if Path(path).expanduser().is_dir():
        raise UserError(f"{flag} '{path}' is a folder; give a file path, e.g. {example}")


def check_resume(output_dir: str, resume: str | None) -> None:
    """The checkpoint `resume` names (in the run folder `output_dir`) must hold a readable training state
    written by dreamlr: a truncated or foreign file fails here, before any model loads."""
    from dreamlr.training import CheckpointManager, read_training_state

    folder = CheckpointManager(Path(output_dir)).resolve(resume)
    if folder is not None:
        read_training_state(folder)
