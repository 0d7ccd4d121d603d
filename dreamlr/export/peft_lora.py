"""PEFT LoRA format: `adapter_config.json` + `adapter_model.safetensors`, as `PeftModel.from_pretrained` reads them.

The LoraConfig written here (r, lora_alpha, rank_pattern, alpha_pattern, target_modules,
use_dora) is also what diffusers keeps in a LoRA file's `lora_adapter_metadata` header.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dreamlr.errors import UserError
from dreamlr.export import naming
from dreamlr.export.factors import LoRAFactors
from dreamlr.export.files import read_safetensors
from dreamlr.fileio import write_safetensors

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
PEFT_DEFAULT_ALPHA = 8  # LoraConfig's lora_alpha when a config leaves it out


def lora_config(factors: dict[str, LoRAFactors]) -> dict[str, Any]:
    """LoraConfig fields for these layers (names relative to the model); per-layer ranks and alphas
    that differ from the most common ones go to `rank_pattern` / `alpha_pattern`."""
    r = Counter(f.rank for f in factors.values()).most_common(1)[0][0]
    alpha = Counter(f.alpha for f in factors.values()).most_common(1)[0][0]
    return {
        "r": r,
        "lora_alpha": _number(alpha),
        "rank_pattern": {re.escape(n): f.rank for n, f in factors.items() if f.rank != r},
        "alpha_pattern": {re.escape(n): _number(f.alpha) for n, f in factors.items() if f.alpha != alpha},
        "target_modules": sorted(factors),
        "use_dora": any(f.magnitude is not None for f in factors.values()),
        "fan_in_fan_out": any(f.fan_in_fan_out for f in factors.values()),
    }


def module_alpha(config: dict[str, Any] | None, path: str, rank: int) -> float:
    """The alpha a LoraConfig gives module `path` (PEFT's pattern rule); rank when there is no config."""
    if config is None:
        return float(rank)
    alpha = config.get("lora_alpha", PEFT_DEFAULT_ALPHA)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path):
            alpha = value
            break
    # rsLoRA scales by alpha/√r; dreamlr by alpha/r
    return float(alpha) * math.sqrt(rank) if config.get("use_rslora") else float(alpha)


def write(factors: dict[str, LoRAFactors], folder: Path, base_model: str,
          full: dict[str, torch.Tensor] | None = None, task_type: str | None = None) -> None:
    """One PEFT adapter folder for one model (`folder` must exist); `full` parameters (a trained task
    head, by parameter name) go in whole, as PEFT's `modules_to_save`.

    A Stable Diffusion CLIP text encoder (`folder` named text_encoder) is named `encoder.…` by
    transformers 5 and `text_model.encoder.…` by 4.x, and PEFT loads only the keys of the model's own
    layout (ignoring others): its tensors are written under both names, the config's in the flat
    form, which PEFT matches as a suffix of either."""
    full = full or {}
    clip = naming.sd_component(factors, folder.name) == "text_encoder"
    if clip:
        factors = {name.removeprefix(naming.CLIP_PREFIX): f for name, f in factors.items()}
    config = {"peft_type": "LORA", "task_type": task_type, "base_model_name_or_path": base_model, "bias": "none",
              "lora_dropout": 0.0, "inference_mode": True, **lora_config(factors),
              "modules_to_save": sorted({name.rsplit(".", 1)[0] for name in full}) or None}
    tensors = {f"{PREFIX}{name}": tensor.detach().to("cpu").contiguous() for name, tensor in full.items()}
    for name, f in factors.items():
        for key in (name, naming.CLIP_PREFIX + name) if clip else (name,):
            tensors[f"{PREFIX}{key}.lora_A.weight"] = f.down_weight.clone().contiguous()
            tensors[f"{PREFIX}{key}.lora_B.weight"] = f.up_weight.clone().contiguous()
            if f.magnitude is not None:
                tensors[f"{PREFIX}{key}.lora_magnitude_vector"] = f.magnitude_weight.clone().contiguous()
    write_safetensors(folder / WEIGHTS_FILE, tensors, {"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def is_adapter_folder(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def read(folder: Path) -> tuple[dict[str, LoRAFactors], dict[str, Any], dict[str, torch.Tensor]]:
    """(factors by module name, adapter config, full parameters of `modules_to_save` by name) of one
    PEFT LoRA folder."""
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"'{folder / CONFIG_FILE}' is not a readable JSON file ({exc})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"'{folder}' is a PEFT {config['peft_type']} adapter; only LoRA (and DoRA) can be imported")
    tensors, _ = read_safetensors(folder / WEIGHTS_FILE)
    saved = [re.compile(rf"(^|.*\.){re.escape(m)}(\..+)?\.[^.]+$") for m in config.get("modules_to_save") or []]
    full = {key.removeprefix(PREFIX): tensors.pop(key) for key in list(tensors)
            if ".lora_" not in key and any(p.match(key.removeprefix(PREFIX)) for p in saved)}
    factors = lora_tensors(tensors, folder / WEIGHTS_FILE, PREFIX, lambda path, rank: module_alpha(config, path, rank))
    return factors, config, full


def lora_tensors(tensors: dict[str, torch.Tensor], source: Path, prefix: str,
                 alpha_of: Callable[[str, int], float]) -> dict[str, LoRAFactors]:
    """Group PEFT-style keys `<prefix><module>.lora_A.weight` / `.lora_B.weight` /
    `.lora_magnitude_vector[.weight]` into factors per module; anything else is an error naming it."""
    parts: dict[str, dict[str, Any]] = {}
    pattern = re.compile(rf"{re.escape(prefix)}(.+)\.(lora_A\.weight|lora_B\.weight"
                         r"|lora_magnitude_vector(?:\.weight)?)$")
    for key, tensor in tensors.items():
        match = pattern.match(key)
        if match is None:
            raise UserError(f"'{source}': key {key!r} is not a LoRA tensor this importer knows "
                            f"(expected {prefix}<module>.lora_A.weight / .lora_B.weight / .lora_magnitude_vector)")
        parts.setdefault(match[1], {})[match[2].split(".")[0]] = tensor
    factors = {}
    for name, part in parts.items():
        if "lora_A" not in part or "lora_B" not in part:
            raise UserError(f"'{source}': module {name!r} has {' and '.join(sorted(part))} "
                            "but not both lora_A and lora_B")
        down, up = part["lora_A"], part["lora_B"]
        factors[name] = LoRAFactors.from_weights(down, up, alpha_of(name, down.shape[0]),
                                                 part.get("lora_magnitude_vector"))
    return factors


def _number(value: float) -> int | float:
    """An alpha as JSON: integral values as ints, as PEFT writes them."""
    return int(value) if float(value).is_integer() else value
