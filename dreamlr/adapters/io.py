"""save_adapter / load_adapter: one .safetensors, the config and step in its header."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from dreamlr import __version__
from dreamlr.adapters.attach import adapter_configs, adapter_layers, attach_to, detach, get_step, set_step
from dreamlr.adapters.config import AdapterConfig, AdapterConfigError
from dreamlr.errors import UserError
from dreamlr.fileio import atomic_path

FORMAT = "dreamlr-adapter"
FORMAT_VERSION = "1"


class AdapterFileError(UserError, ValueError):
    """An adapter file that is missing, unreadable, or does not fit the model."""


def save_adapter(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write the model's adapter tensors to `path` atomically (temp file, then rename).

    Keys are `<module path>.<tensor name>`; the header holds the configs, the step, dreamlr's
    version and `metadata` (JSON-able; `base_model` is checked on load).
    """
    tensors = {}
    for name, layer in adapter_layers(model):
        for tensor_name in layer.tensor_names:
            tensor = getattr(layer, tensor_name).detach()
            tensors[f"{name}.{tensor_name}"] = tensor.to("cpu", copy=True).contiguous()
    if not tensors:
        raise AdapterFileError(f"cannot save {path}: the model has no adapter attached")
    groups = [{"config": config.to_dict(), "modules": names} for config, names in adapter_configs(model)]
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dreamlr_version": __version__,
        "adapters": json.dumps(groups),
        "step": str(get_step(model)),
        "metadata": json.dumps(metadata or {}, default=str),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=header)
    return Path(path)


def read_adapter_header(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed header of a dreamlr adapter file: configs, modules, step, metadata."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"adapter file '{path}' does not exist")
    try:
        with safe_open(path, framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception as exc:  # safetensors raises several types for a bad file
        raise AdapterFileError(f"adapter file '{path}' is not a readable .safetensors file ({exc})") from None
    if raw.get("format") != FORMAT:
        raise AdapterFileError(
            f"'{path}' is not a dreamlr adapter (no dreamlr header); "
            "a diffusers, PEFT or kohya LoRA file must be imported first"
        )
    groups = [
        (AdapterConfig.from_dict(group["config"]), list(group["modules"])) for group in json.loads(raw["adapters"])
    ]
    return {"groups": groups, "step": int(raw.get("step", 0)), "metadata": json.loads(raw.get("metadata", "{}")),
            "dreamlr_version": raw.get("dreamlr_version")}


def load_adapter(model: nn.Module, path: str | os.PathLike, *, base_model: str | None = None) -> list[str]:
    """Load an adapter file into `model`; returns the adapted module names.

    With no adapter attached, attaches from the file's own configs; otherwise the attached
    adapters must match the file's variant, modules and shapes. The first mismatch is an error.
    """
    header = read_adapter_header(path)
    file_base = header["metadata"].get("base_model")
    if base_model and file_base and base_model != file_base:
        raise AdapterFileError(f"adapter '{path}' was trained on base model {file_base!r}, not {base_model!r}")
    attached_here = not any(True for _ in adapter_layers(model))
    try:
        if attached_here:
            for config, names in header["groups"]:
                attach_to(model, names, config)
        _copy_tensors(path, model, header["groups"])
    except (AdapterConfigError, AdapterFileError) as exc:
        if attached_here:
            detach(model)
        message = str(exc) if isinstance(exc, AdapterFileError) else f"adapter '{path}' does not fit this model: {exc}"
        raise AdapterFileError(message) from None
    set_step(model, header["step"])
    return [name for name, _ in adapter_layers(model)]


def _copy_tensors(path: str | os.PathLike, model: nn.Module, groups: list[tuple[AdapterConfig, list[str]]]) -> None:
    """Check the attached adapters against the file, then copy the file's tensors in."""
    layers = dict(adapter_layers(model))
    _check_layers(path, layers, groups)
    with safe_open(path, framework="pt") as handle, torch.no_grad():
        in_file = set(handle.keys())
        for module_name, layer in layers.items():
            for tensor_name in layer.tensor_names:
                key = f"{module_name}.{tensor_name}"
                if key not in in_file:
                    raise AdapterFileError(f"adapter '{path}': tensor {key!r} is missing from the file")
                param, tensor = getattr(layer, tensor_name), handle.get_tensor(key)
                if tuple(tensor.shape) != tuple(param.shape):
                    raise AdapterFileError(
                        f"adapter '{path}': {key} has shape {tuple(tensor.shape)} in the file "
                        f"but {tuple(param.shape)} in the model"
                    )
                param.copy_(tensor)
                in_file.discard(key)
        if in_file:
            raise AdapterFileError(f"adapter '{path}': tensor {sorted(in_file)[0]!r} has no place in this model")


def _check_layers(path: str | os.PathLike, layers: dict[str, nn.Module],
                  groups: list[tuple[AdapterConfig, list[str]]]) -> None:
    """Raise on the first module whose presence or variant differs between file and model."""
    in_file = {name: config for config, names in groups for name in names}
    for name, config in in_file.items():
        layer = layers.get(name)
        if layer is None:
            raise AdapterFileError(f"adapter '{path}': module {name!r} has no adapter in this model")
        if layer.config.variant != config.variant:
            raise AdapterFileError(
                f"adapter '{path}': module {name!r} is {config.variant} in the file but "
                f"{layer.config.variant} in the model"
            )
    extra = next((name for name in layers if name not in in_file), None)
    if extra is not None:
        raise AdapterFileError(f"adapter '{path}': the model's adapter on {extra!r} is not in the file")
