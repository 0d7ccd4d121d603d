"""What dreamlr asks of the model hub: whether it is offline, and whether a source names a path."""

from __future__ import annotations

import os

from huggingface_hub import constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set (now or when huggingface_hub was imported)."""
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def looks_like_path(source: str, file_suffixes: tuple[str, ...] = ()) -> bool:
    """Whether `source` is meant as a local path rather than a hub id."""
    if source.startswith((".", "~", os.sep)) or source.lower().endswith(file_suffixes):
        return True
    try:
        validate_repo_id(source)
    except HFValidationError:
        return True
    return False
