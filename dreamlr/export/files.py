"""Reading a LoRA .safetensors file (tensors and header) with one-line errors."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from dreamlr.errors import UserError


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, header metadata) of a .safetensors file."""
    if not path.is_file():
        raise UserError(f"'{path}' does not exist")
    try:
        with safe_open(path, framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises several types for a bad file
        raise UserError(f"'{path}' is not a readable .safetensors file ({exc})") from None
