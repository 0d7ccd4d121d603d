"""What dreamlr asks of the model hub: whether it is offline, and whether a source names a path."""

from __future__ import annotations

import os

from huggingface_hub import constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline(*, transformers: bool = False) -> bool:
    """True when HF_HUB_OFFLINE is set (now or when huggingface_hub was imported); with `transformers`,
    TRANSFORMERS_OFFLINE counts too, as it does for transformers' and datasets' loaders."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if transformers else ("HF_HUB_OFFLINE",)
    return bool(constants.HF_HUB_OFFLINE) or any(os.environ.get(key, "").upper() in _TRUE for key in keys)


def looks_like_path(source: str, file_suffixes: tuple[str, ...] = ()) -> bool:
    """Whether `source` is meant as a local path rather than a hub id."""
    if source.startswith((".", "~", os.sep)) or source.lower().endswith(file_suffixes):
        return True
    try:
        validate_repo_id(source)
    except HFValidationError:
        return True
    return False
