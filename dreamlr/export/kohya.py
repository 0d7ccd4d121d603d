"""kohya format (sd-scripts, A1111 web UI, ComfyUI): `lora_unet_…` / `lora_te_…` with lora_down, lora_up, alpha.

Each module has `<name>.lora_down.weight` (r, in[, kh, kw]), `<name>.lora_up.weight` (out, r[, 1, 1])
and `<name>.alpha` (a scalar); the update is alpha/r · up·down. kohya has no DoRA.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from dreamlr.errors import UserError
from dreamlr.export import naming
from dreamlr.export.factors import LoRAFactors
from dreamlr.export.files import read_safetensors

_KEY = re.compile(r"(lora_(?:unet|te\d?)_[^.]+)\.(lora_down\.weight|lora_up\.weight|alpha|dora_scale)$")


def is_kohya(keys: list[str]) -> bool:
    return bool(keys) and all(key.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for key in keys)


def write(components: dict[str, dict[str, LoRAFactors]], path: Path, header: dict[str, str]) -> None:
    """Write the factors of each pipeline part ("unet", "text_encoder"; names relative to it) to `path`."""
    tensors = {}
    for component, factors in components.items():
        for name, f in factors.items():
            key = naming.kohya_name(component, name)
            tensors[f"{key}.lora_down.weight"] = f.down_weight.contiguous()
            tensors[f"{key}.lora_up.weight"] = f.up_weight.contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(f.alpha, dtype=torch.float32)
    save_file(tensors, path, metadata=header)


def read(path: Path) -> tuple[dict[str, LoRAFactors], dict[str, str]]:
    """(factors by kohya module name, header) of a kohya LoRA file; alpha = rank where `.alpha` is missing."""
    tensors, header = read_safetensors(path)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise UserError(f"'{path}': key {key!r} is not a kohya LoRA tensor "
                            "(lora_down.weight, lora_up.weight, alpha)")
        if match[2] == "dora_scale":
            raise UserError(f"'{path}': {match[1]} is a kohya DoRA layer (dora_scale), which cannot be imported; "
                            "export it from its tool as a plain LoRA or as PEFT DoRA")
        parts.setdefault(match[1], {})[match[2].split(".")[0]] = tensor
    factors = {}
    for name, part in parts.items():
        if "lora_down" not in part or "lora_up" not in part:
            raise UserError(f"'{path}': {name} lacks its lora_down or lora_up weight")
        down, up = part["lora_down"], part["lora_up"]
        alpha = float(part["alpha"]) if "alpha" in part else float(down.shape[0])
        factors[name] = LoRAFactors.from_weights(down, up, alpha)
    return factors, header
