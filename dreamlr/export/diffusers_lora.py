"""diffusers LoRA format: one `pytorch_lora_weights.safetensors` that `pipe.load_lora_weights` reads.

Keys `unet.<path>.lora_A.weight` / `.lora_B.weight` (+ `.lora_magnitude_vector.weight` for DoRA),
`text_encoder.text_model.<path>…` likewise; the `lora_adapter_metadata` header holds each part's
LoraConfig (r, lora_alpha, rank_pattern, alpha_pattern, …) so diffusers applies the right scale.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from dreamlr.errors import UserError
from dreamlr.export import naming
from dreamlr.export.factors import LoRAFactors
from dreamlr.export.files import read_safetensors
from dreamlr.export.peft_lora import lora_config, lora_tensors, module_alpha

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY


def write(components: dict[str, dict[str, LoRAFactors]], path: Path, header: dict[str, str]) -> None:
    """Write the factors of each pipeline part ("unet", "text_encoder"; names relative to it) to `path`."""
    tensors, metadata = {}, {}
    for component, factors in components.items():
        for name, f in factors.items():
            key = f"{component}.{naming.file_path(component, name)}"
            tensors[f"{key}.lora_A.weight"] = f.down_weight.contiguous()
            tensors[f"{key}.lora_B.weight"] = f.up_weight.contiguous()
            if f.magnitude is not None:
                tensors[f"{key}.lora_magnitude_vector.weight"] = f.magnitude_weight.contiguous()
        # names without `text_model.`: PEFT matches them as suffixes, so they fit flat and nested CLIP models
        metadata.update({f"{component}.{k}": v for k, v in lora_config(factors).items()})
    save_file(tensors, path, metadata={**header, "format": "pt", METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def read(path: Path) -> tuple[dict[str, LoRAFactors], dict[str, str]]:
    """(factors by `<part>.<path>` as the file names them, header) of a diffusers LoRA file.

    Without a `lora_adapter_metadata` header alpha = rank (diffusers' rule: scale 1).
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

    return lora_tensors(tensors, path, "", alpha_of), header
