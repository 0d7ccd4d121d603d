"""kohya format (sd-scripts, A1111 web UI, ComfyUI): `lora_unet_…` / `lora_te_…` (SDXL: `lora_te1_…`,
`lora_te2_…`) with lora_down, lora_up, alpha.

Each module has `<name>.lora_down.weight` (r, in[, kh, kw]), `<name>.lora_up.weight` (out, r[, 1, 1])
and `<name>.alpha` (a scalar); the update is alpha/r · up·down. kohya has no DoRA. A LyCORIS LoHa layer
has `hada_w1_a` … `hada_w2_b` and its own `.alpha` instead (`dreamlr.export.loha`).
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from pathlib import Path

import torch

from dreamlr.export import layouts, loha, naming
from dreamlr.export.factors import LoRAFactors
from dreamlr.export.files import read_safetensors
from dreamlr.export.loha import HadaFactors
from dreamlr.fileio import write_safetensors

Factors = LoRAFactors | HadaFactors


# the layers sd-scripts' LoRA network (networks/lora.py) has modules for, so loads from a file: UNet layers inside
# a Transformer2DModel, ResnetBlock2D, Downsample2D or Upsample2D block; text-encoder layers inside CLIPAttention
# or CLIPMLP
SD_SCRIPTS_LAYERS = {
    "unet": re.compile(r"((down|up)_blocks\.\d+\.(attentions|resnets|downsamplers|upsamplers)"
                       r"|mid_block\.(attentions|resnets))\.\d+\."),
    "text_encoder": re.compile(r"(.*\.)?encoder\.layers\.\d+\.(self_attn|mlp)\."),
}
SD_SCRIPTS_LAYERS["text_encoder_2"] = SD_SCRIPTS_LAYERS["text_encoder"]


def sd_scripts_drops(components: dict[str, dict[str, Factors]]) -> list[str]:
    """`<part>.<path>` of the layers sd-scripts ignores when it loads a kohya file (conv_in, conv_out,
    time_embedding.*, …): it has no LoRA module for them."""
    return [f"{component}.{name}" for component, factors in components.items() for name in factors
            if component not in SD_SCRIPTS_LAYERS or not SD_SCRIPTS_LAYERS[component].match(name)]


def file_alpha(components: dict[str, dict[str, Factors]]) -> float:
    """One alpha for every LoRA layer of a kohya file: the most common one (√(αᵢ/α) folded into both factors of a
    layer with another alpha, the same update). diffusers' kohya converter turns per-layer alphas into patterns
    that match no module and then scales those layers with the first one's alpha. LoHa layers keep their own."""
    alphas = Counter(f.alpha for factors in components.values() for f in factors.values() if isinstance(f, LoRAFactors))
    return alphas.most_common(1)[0][0] if alphas else 1.0


def is_kohya(keys: list[str]) -> bool:
    return bool(keys) and all(key.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for key in keys)


def write(components: dict[str, dict[str, Factors]], path: Path, header: dict[str, str],
          sdxl_ldm: dict[str, str] | None = None) -> None:
    """Write the factors of each pipeline part ("unet", "text_encoder", "text_encoder_2"; names relative to
    it) to `path`; a warning on stderr names the layers sd-scripts would drop.

    For an SDXL base, `sdxl_ldm` is its UNet's diffusers → original (LDM) module names: sd-scripts names SDXL
    UNet layers as the original model does (`lora_unet_input_blocks_4_1_…`), and its text encoders
    `lora_te1_` / `lora_te2_`; ComfyUI, A1111 and diffusers read those names too."""
    dropped = sd_scripts_drops(components)
    if dropped:
        total = sum(len(factors) for factors in components.values())
        print(f"warning: sd-scripts ignores {len(dropped)} of the {total} layers of this kohya file (it applies "
              "LoRA only inside Transformer2DModel, ResnetBlock2D, Down/Upsample2D, CLIPAttention and CLIPMLP "
              f"blocks; diffusers and ComfyUI apply them): {', '.join(dropped)}", file=sys.stderr)
    tensors = {}
    alpha = file_alpha(components)
    for component, factors in components.items():
        for name, f in factors.items():
            if sdxl_ldm is not None and component == "unet":
                key = naming.KOHYA_PREFIXES["unet"] + sdxl_ldm[name].replace(".", "_")
            else:
                key = naming.kohya_name(component, name, sdxl=sdxl_ldm is not None)
            if isinstance(f, HadaFactors):  # as LyCORIS writes it, its own alpha
                tensors.update({f"{key}.{role}": tensor for role, tensor in f.tensors.items()})
                tensors[f"{key}.alpha"] = torch.tensor(f.alpha, dtype=torch.float32)
                continue
            root = math.sqrt(f.alpha / alpha)  # 1 unless this layer's alpha differs from the file's
            tensors[f"{key}.lora_down.weight"] = (f.down_weight * root if root != 1 else f.down_weight).contiguous()
            tensors[f"{key}.lora_up.weight"] = (f.up_weight * root if root != 1 else f.up_weight).contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    write_safetensors(path, tensors, header)


def read(path: Path) -> tuple[dict[str, Factors], dict[str, str]]:
    """(factors by kohya module name, header) of a kohya LoRA or LyCORIS LoCon / LoHa file (`lora_mid` Tucker cores
    folded in); alpha = rank where `.alpha` is missing."""
    tensors, header = read_safetensors(path)
    modules = layouts.group(tensors, path, loha=True)
    hada = {name: loha.from_file(name, parts, path) for name, parts in modules.items() if loha.is_loha(parts)}
    lora = {name: parts for name, parts in modules.items() if name not in hada}
    return {**layouts.factors(lora, path, lambda name, rank: float(rank)), **hada}, header
