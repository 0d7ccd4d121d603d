"""The original (LDM / CompVis) names of a diffusers UNet's modules, as A1111, ComfyUI and sd-scripts
spell LoRA keys such as `lora_unet_input_blocks_1_1_proj_in`.

LDM numbers blocks flat: `input_blocks.0.0` is conv_in; then each down block's layers, one
`input_blocks.N` per (resnet, attention) pair and one per downsampler; `middle_block.0/1/2`
alternate resnets and attentions; each up block's layers are `output_blocks.N` with the resnet at
`.0`, the attention at `.1` and the upsampler after them. The map is read off the UNet's own
structure, so it fits SD 1.x, 2.x and SDXL layouts (and `tiny`) alike.
"""

from __future__ import annotations

from torch import nn

# diffusers name inside a block → LDM name inside it, by block kind
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_DOWNSAMPLER = {"conv": "op"}
_TOP = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def ldm_names(unet: nn.Module) -> dict[str, str]:
    """{diffusers module path: LDM module path} for every module of a diffusers UNet2DConditionModel
    that has an LDM name (its top-level layers and everything inside its blocks)."""
    blocks = _block_prefixes(unet)
    names = {}
    for name, _ in unet.named_modules():
        if name in _TOP:
            names[name] = _TOP[name]
            continue
        for prefix, (ldm_prefix, inner) in blocks.items():
            if name == prefix or name.startswith(prefix + "."):
                rest = name[len(prefix) + 1:]
                head, _, tail = rest.partition(".")
                rest = ".".join(filter(None, [inner.get(head, head), tail]))
                names[name] = ".".join(filter(None, [ldm_prefix, rest]))
                break
    return names


def _block_prefixes(unet: nn.Module) -> dict[str, tuple[str, dict[str, str]]]:
    """{diffusers block prefix (e.g. `down_blocks.0.resnets.1`): (LDM prefix, inner renames)}."""
    prefixes: dict[str, tuple[str, dict[str, str]]] = {}
    index = 1  # input_blocks.0 is conv_in
    for i, block in enumerate(getattr(unet, "down_blocks", [])):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            prefixes[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{index}.0", _RESNET)
            if attentions is not None and j < len(attentions):
                prefixes[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{index}.1", {})
            index += 1
        if getattr(block, "downsamplers", None):
            prefixes[f"down_blocks.{i}.downsamplers.0"] = (f"input_blocks.{index}.0", _DOWNSAMPLER)
            index += 1
    mid = getattr(unet, "mid_block", None)
    if mid is not None:  # resnet, attention, resnet, …
        for j in range(len(mid.resnets)):
            prefixes[f"mid_block.resnets.{j}"] = (f"middle_block.{2 * j}", _RESNET)
        for j in range(len(getattr(mid, "attentions", None) or [])):
            prefixes[f"mid_block.attentions.{j}"] = (f"middle_block.{2 * j + 1}", {})
    index = 0
    for i, block in enumerate(getattr(unet, "up_blocks", [])):
        attentions = getattr(block, "attentions", None)
        for j in range(len(block.resnets)):
            prefixes[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{index}.0", _RESNET)
            if attentions is not None and j < len(attentions):
                prefixes[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{index}.1", {})
            if j == len(block.resnets) - 1 and getattr(block, "upsamplers", None):
                position = 2 if attentions is not None else 1
                prefixes[f"up_blocks.{i}.upsamplers.0"] = (f"output_blocks.{index}.{position}", {})
            index += 1
    return prefixes
