"""Where the built-in `world` model and encoders live: assets/world/ in the source tree, or the folder
DREAMLR_WORLD_DIR names (a build's output, e.g. `python scripts/build_world.py --out DIR`)."""

from __future__ import annotations

import os
from pathlib import Path

from dreamlr.errors import UserError

WORLD = "world"
ENV = "DREAMLR_WORLD_DIR"
PARTS = {"model": "model", "clip": "clip", "dino": "dino", "subjects": "subjects"}
_MARKERS = {"model": "model_index.json", "clip": "open_clip_config.json", "dino": "config.json",
            "subjects": "prompts_and_classes.txt"}


def world_dir() -> Path:
    """The folder holding the world's parts."""
    override = os.environ.get(ENV)
    return Path(override).expanduser() if override else Path(__file__).resolve().parents[2] / "assets" / "world"


def world_part(part: str) -> Path:
    """The folder of one part (`model`, `clip`, `dino`, `subjects`); a UserError when it is not built."""
    folder = world_dir() / PARTS[part]
    if not (folder / _MARKERS[part]).is_file():
        raise UserError(f"built-in '{WORLD}' {part}: not built yet ({folder / _MARKERS[part]} is missing); run "
                        f"`python scripts/build_world.py --out DIR` and set {ENV}=DIR/world, or use `tiny`")
    return folder
