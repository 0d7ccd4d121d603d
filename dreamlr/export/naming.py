"""Module names across formats: dreamlr's `unet.` / `text_encoder.` paths, LoRA files' CLIP names, kohya names.

A Stable Diffusion adapter names modules `unet.<path>` and `text_encoder.<path>` (the trainer
saves from a ModuleDict of the two); a text-model adapter names them as the model does. LoRA files
spell CLIP text-encoder modules `text_model.encoder…` (recent transformers flatten CLIPTextModel to
`encoder…`), and kohya writes `lora_unet_` / `lora_te_` + the path with `_` for `.`; kohya files from
other tools also spell the text encoder `lora_te1_` and UNet paths as original SD does (`ldm.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

COMPONENTS = ("unet", "text_encoder")
CLIP_PREFIX = "text_model."
# the top-level modules of a diffusers UNet2DConditionModel
UNET_TOP = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "conv_norm_out", "time_embedding.",
            "add_embedding.")
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
# other spellings readers accept for the one text encoder of SD 1.x/2.x (diffusers' convert_state_dict_to_kohya
# and SDXL-style files write lora_te1_)
KOHYA_ALIASES = {"text_encoder": ("lora_te1_",)}


def is_diffusion(names: Iterable[str]) -> bool:
    """Whether adapter module names belong to a Stable Diffusion pipeline (all under unet / text_encoder)."""
    return all(name.split(".", 1)[0] in COMPONENTS for name in names)


def split(name: str) -> tuple[str, str]:
    """`unet.down_blocks…` → ("unet", "down_blocks…")."""
    component, _, path = name.partition(".")
    return component, path


def sd_component(names: Iterable[str], folder: str = "") -> str | None:
    """The pipeline part a set of module paths (without `unet.` / `text_encoder.`) belongs to: "unet" for UNet
    paths, "text_encoder" for CLIP paths in a folder of that name; None for anything else (a text model)."""
    names = list(names)
    if names and all(name.startswith(UNET_TOP) for name in names):
        return "unet"
    if names and folder == "text_encoder" and all(name.startswith((CLIP_PREFIX, "encoder.layers.")) for name in names):
        return "text_encoder"
    return None


def file_path(component: str, path: str) -> str:
    """A module's path as LoRA files write it: CLIP text-encoder paths under `text_model.`."""
    if component == "text_encoder" and not path.startswith(CLIP_PREFIX):
        return CLIP_PREFIX + path
    return path


def kohya_name(component: str, path: str) -> str:
    """`lora_unet_down_blocks_0_…` / `lora_te_text_model_encoder_…`."""
    return KOHYA_PREFIXES[component] + file_path(component, path).replace(".", "_")


class ModuleIndex:
    """Finds a model's module from the name a LoRA file gives it (dotted or kohya).

    `ldm` maps UNet module paths to their original-SD (LDM) paths (`dreamlr.export.ldm.ldm_names`),
    so that kohya names in either spelling (`lora_unet_down_blocks_0_…`, `lora_unet_input_blocks_1_…`) fit.
    """

    def __init__(self, names: Iterable[str], diffusion: bool, ldm: dict[str, str] | None = None) -> None:
        self.dotted: dict[str, str] = {}
        self.kohya: dict[str, str] = {}
        for name in names:
            self.dotted[name] = name
            if diffusion and name.split(".", 1)[0] in COMPONENTS:
                component, path = split(name)
                self.dotted.setdefault(f"{component}.{file_path(component, path)}", name)
                self.kohya[kohya_name(component, path)] = name
                kohya_path = kohya_name(component, path).removeprefix(KOHYA_PREFIXES[component])
                for alias in KOHYA_ALIASES.get(component, ()):
                    self.kohya.setdefault(alias + kohya_path, name)
                if component == "unet" and ldm and path in ldm:
                    self.kohya.setdefault(KOHYA_PREFIXES["unet"] + ldm[path].replace(".", "_"), name)

    def find(self, file_name: str, kohya: bool = False) -> str | None:
        """The model's module name for `file_name`, or None when the model has no such module."""
        return (self.kohya if kohya else self.dotted).get(file_name)
