"""save_adapter / load_adapter: one .safetensors, the config and step in its header."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from dreamlr import __version__
from dreamlr.adapters.attach import (
    adapter_configs,
    adapter_layers,
    attach_to,
    detach,
    get_step,
    reconfigure,
    set_step,
)
from dreamlr.adapters.config import AdapterConfig, AdapterConfigError
from dreamlr.errors import UserError
from dreamlr.fileio import write_safetensors

FORMAT = "dreamlr-adapter"
FORMAT_VERSION = "1"


class AdapterFileError(UserError, ValueError):
    """An adapter file that is missing, unreadable, or does not fit the model."""


def save_adapter(model: nn.Module, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write the model's adapter tensors to `path` atomically (temp file, then rename).

    Keys are `<module path>.<tensor name>`; the header holds the configs, the step, dreamlr's
    version and `metadata` (JSON-able; `base_model` is checked on load). The bytes are a function of
    the tensors, configs and metadata only (keys in a fixed order), so identical runs give identical files.
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
        "adapters": json.dumps(groups, sort_keys=True),
        "step": str(get_step(model)),
        "metadata": json.dumps(metadata or {}, default=str, sort_keys=True),
    }
    return write_safetensors(path, tensors, header)


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
    try:
        return _parse_header(raw)
    except AdapterConfigError as exc:
        raise AdapterFileError(f"adapter file '{path}' holds a bad adapter config: {exc}") from None
    except KeyError as exc:
        raise AdapterFileError(f"adapter file '{path}' has a broken header: key {exc} is missing") from None
    except (TypeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        message = " ".join(str(exc).split())
        raise AdapterFileError(f"adapter file '{path}' has a broken header: {message}") from None


def _parse_header(raw: dict[str, str]) -> dict[str, Any]:
    """The header's strings as configs, modules, step and metadata; raises KeyError, TypeError or ValueError."""
    groups = []
    for group in _json_field(raw, "adapters", list):
        if not isinstance(group, dict):
            raise TypeError(f"`adapters` holds {type(group).__name__} {group!r}, not a {{config, modules}} object")
        config = group["config"]
        if not isinstance(config, dict):
            raise TypeError(f"an adapter config is {type(config).__name__} {config!r}, not an object")
        modules = group["modules"]
        if not isinstance(modules, list) or not modules or not all(isinstance(m, str) for m in modules):
            raise TypeError(f"`modules` must be a non-empty list of module names, got {modules!r}")
        groups.append((AdapterConfig.from_dict(config), list(modules)))
    if not groups:
        raise ValueError("`adapters` is empty")
    step = raw.get("step", "0")
    if not step.isdigit():
        raise ValueError(f"`step` must be a non-negative integer, got {step!r}")
    metadata = _json_field(raw, "metadata", dict, default="{}")
    return {"groups": groups, "step": int(step), "metadata": metadata, "dreamlr_version": raw.get("dreamlr_version")}


def _json_field(raw: dict[str, str], key: str, kind: type, default: str | None = None) -> Any:
    """One JSON-encoded header field, of type `kind`."""
    text = raw[key] if default is None else raw.get(key, default)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"`{key}` is not valid JSON ({exc})") from None
    if not isinstance(value, kind):
        raise TypeError(f"`{key}` must be a JSON {'list' if kind is list else 'object'}, got {type(value).__name__}")
    return value


def load_adapter(model: nn.Module, path: str | os.PathLike, *, base_model: str | None = None) -> list[str]:
    """Load an adapter file into `model`; returns the adapted module names.

    With no adapter attached, attaches from the file's own configs. Otherwise the attached adapters
    must match the file's modules, variants and shapes, and take the file's configs (α, τ, ramps, …),
    so the loaded function is the saved one; merged layers are unmerged, loaded and merged again.
    Everything is checked first (a misfit, a non-finite tensor: one error naming the first problem),
    and the model is left as it was on any error.
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
        tensors = _read_tensors(path, model, header["groups"])
    except (AdapterConfigError, AdapterFileError) as exc:
        if attached_here:
            detach(model)
        message = str(exc) if isinstance(exc, AdapterFileError) else f"adapter '{path}' does not fit this model: {exc}"
        raise AdapterFileError(message) from None
    configs = {name: config for config, names in header["groups"] for name in names}
    layers = dict(adapter_layers(model))
    merged = [name for name, layer in layers.items() if layer.merged]
    with torch.no_grad():
        for name, layer in layers.items():
            layer.unmerge()
            reconfigure(layer, configs[name])
            for tensor_name in layer.tensor_names:
                getattr(layer, tensor_name).copy_(tensors[f"{name}.{tensor_name}"])
    set_step(model, header["step"])
    for name in merged:  # after set_step: ramps and warm-ups enter W'
        layers[name].merge()
    return list(layers)


def _read_tensors(path: str | os.PathLike, model: nn.Module,
                  groups: list[tuple[AdapterConfig, list[str]]]) -> dict[str, torch.Tensor]:
    """Check the attached adapters against the file and read its tensors; changes nothing in the model."""
    layers = dict(adapter_layers(model))
    _check_layers(path, layers, groups)
    tensors = {}
    try:
        with safe_open(path, framework="pt") as handle:
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
                    if not (tensor.is_floating_point() and torch.isfinite(tensor).all()):
                        what = "NaN or infinite values" if tensor.is_floating_point() else f"{tensor.dtype} values"
                        raise AdapterFileError(f"adapter '{path}': tensor {key!r} holds {what}; the file is unusable")
                    tensors[key] = tensor
                    in_file.discard(key)
    except AdapterFileError:
        raise
    except Exception as exc:  # safetensors raises several types for a truncated or damaged file
        raise AdapterFileError(f"adapter '{path}' could not be read ({' '.join(str(exc).split())})") from None
    if in_file:
        raise AdapterFileError(f"adapter '{path}': tensor {sorted(in_file)[0]!r} has no place in this model")
    return tensors


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
        if config != layer.config:  # the file's config will replace the layer's: it must describe these tensors
            expected = type(layer).param_count(config, layer.out_features, layer.in_features)
            actual = sum(getattr(layer, t).numel() for t in layer.tensor_names)
            if expected != actual:
                raise AdapterFileError(
                    f"adapter '{path}': the config of module {name!r} (rank {config.rank}) does not fit its "
                    f"{actual} adapter parameters in this model"
                )
    extra = next((name for name in layers if name not in in_file), None)
    if extra is not None:
        raise AdapterFileError(f"adapter '{path}': the model's adapter on {extra!r} is not in the file")
