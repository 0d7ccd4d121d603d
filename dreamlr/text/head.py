"""The trained task head (e.g. a classifier layer) as its own .safetensors beside the adapter file."""

from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from dreamlr.errors import UserError
from dreamlr.fileio import write_safetensors

HEAD_FILE = "head.safetensors"


def save_head(model: nn.Module, names: list[str], path: str | os.PathLike) -> Path:
    """Write the named parameters (full names, as in `model.named_parameters()`) atomically."""
    params = dict(model.named_parameters())
    tensors = {name: params[name].detach().to("cpu", copy=True).contiguous() for name in names}
    write_safetensors(path, tensors, {"format": "dreamlr-head"})
    return Path(path)


def load_head(model: nn.Module, names: list[str], path: str | os.PathLike) -> None:
    """Copy a head file into the model; it must hold exactly the named parameters, in their shapes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"head file '{path}' does not exist: the trained classification head cannot be restored")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise UserError(f"head file '{path}' is not a readable .safetensors file ({exc})") from None
    params = dict(model.named_parameters())
    if set(tensors) != set(names):
        odd = min(set(tensors) ^ set(names))
        raise UserError(f"head file '{path}' does not fit this model: {odd!r} is in one but not the other")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise UserError(f"head file '{path}': {name} has shape {tuple(tensor.shape)} in the file but "
                            f"{tuple(params[name].shape)} in the model (another label set?)")
        params[name].data.copy_(tensor)
