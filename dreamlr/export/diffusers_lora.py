"""diffusers LoRA format: one `pytorch_lora_weights.safetensors` that `pipe.load_lora_weights` reads.

Keys `unet.<path>.lora_A.weight` / `.lora_B.weight` (+ `.lora_magnitude_vector.weight` for DoRA),
`text_encoder.text_model.<path>…` likewise; the `lora_adapter_metadata` header holds each part's
LoraConfig (r, lora_alpha, …). The file written is a plain scale-1 LoRA of one rank (α/r folded into
lora_B, smaller ranks padded with zeros), so readers that ignore the header (diffusers before it had
one, ComfyUI) apply the same update as those that read it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from dreamlr.errors import UserError
from dreamlr.export import layouts, naming
from dreamlr.export.factors import LoRAFactors
from dreamlr.export.files import read_safetensors
from dreamlr.fileio import write_safetensors
from dreamlr.export.peft_lora import lora_config, module_alpha

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY


def write(components: dict[str, dict[str, LoRAFactors]], path: Path, header: dict[str, str]) -> None:
    """Write the factors of each pipeline part ("unet", "text_encoder"; names relative to it) to `path`,
    every layer as `plain(f, rank)` at the file's largest rank."""
    rank = max(f.rank for factors in components.values() for f in factors.values())
    tensors, metadata = {}, {}
    for component, factors in components.items():
        factors = {name: plain(f, rank) for name, f in factors.items()}
        for name, f in factors.items():
            key = f"{component}.{naming.file_path(component, name)}"
            tensors[f"{key}.lora_A.weight"] = f.down_weight.contiguous()
            tensors[f"{key}.lora_B.weight"] = f.up_weight.contiguous()
            if f.magnitude is not None:
                tensors[f"{key}.lora_magnitude_vector.weight"] = f.magnitude_weight.contiguous()
        # names without `text_model.`: PEFT matches them as suffixes, so they fit flat and nested CLIP models
        metadata.update({f"{component}.{k}": v for k, v in lora_config(factors).items()})
    write_safetensors(path, tensors, {**header, "format": "pt", METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def plain(f: LoRAFactors, rank: int) -> LoRAFactors:
    """The same update as a rank-`rank` LoRA with alpha = rank (scale 1): up·(alpha/r), zero-padded.

    A reader without the header takes alpha = r, and older diffusers take one alpha for all layers
    (the first layer's rank), so only scale 1 at a single rank reads the same everywhere."""
    pad = rank - f.rank
    up = f.up * (f.alpha / f.rank)
    return replace(f, down=torch.cat([f.down, f.down.new_zeros(pad, f.down.shape[1])]),
                   up=torch.cat([up, up.new_zeros(up.shape[0], pad)], dim=1), alpha=float(rank))


def read(path: Path) -> tuple[dict[str, LoRAFactors], dict[str, str]]:
    """(factors by `<part>.<path>` as the file names them, header) of a diffusers LoRA file in any of its
    layouts (`dreamlr.export.layouts`: lora_A/lora_B, the older lora.down/lora_linear_layer.down and
    attention-processor names, keys without the `unet.` prefix).

    alpha: an `<module>.alpha` tensor, else the `lora_adapter_metadata` header, else rank (diffusers'
    rule: scale 1).
    """
    tensors, header = read_safetensors(path)
    try:
        metadata = json.loads(header[METADATA_KEY]) if METADATA_KEY in header else None
    except ValueError:
        raise UserError(f"'{path}': the {METADATA_KEY} header is not valid JSON") from None

    def alpha_of(name: str, rank: int) -> float:
        if metadata is None:
            return float(rank)
        component, module = naming.split(name)
        config = {k.removeprefix(f"{component}."): v for k, v in metadata.items() if k.startswith(f"{component}.")}
        return module_alpha(config, module, rank)

    return layouts.factors(layouts.group(tensors, path), path, alpha_of), header
