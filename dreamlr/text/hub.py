"""Whether the Hugging Face hub may be reached (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""

from __future__ import annotations

import os

_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """True when the environment forbids hub access, read at call time."""
    from huggingface_hub import constants

    env = any(os.environ.get(key, "").upper() in _TRUE for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)
