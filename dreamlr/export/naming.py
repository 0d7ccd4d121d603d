"""Module names across formats: dreamlr's `unet.` / `text_encoder.` / `text_encoder_2.` paths, LoRA files'
CLIP names, kohya names.

A Stable Diffusion adapter names modules `unet.<path>`, `text_encoder.<path>` and, for SDXL,
`text_encoder_2.<path>` (the trainer saves from a ModuleDict of the parts); a text-model adapter names
them as the model does. LoRA files spell CLIP text-encoder modules `text_model.encoder…` (recent
transformers flatten CLIPTextModel to `encoder…`), and kohya writes `lora_unet_` / `lora_te_` + the path
with `_` for `.` (SDXL: `lora_te1_` and `lora_te2_` for its two encoders); kohya files from other tools
also spell SD's text encoder `lora_te1_` and UNet paths as original SD does (`ldm.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
CLIP_PREFIX = "text_model."
# the top-level modules of a diffusers UNet2DConditionModel
UNET_TOP = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "conv_norm_out", "time_embedding.",
            "add_embedding.")
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
SDXL_KOHYA_PREFIXES = {**KOHYA_PREFIXES, "text_encoder": "lora_te1_"}
# other spellings readers accept for the one text encoder of SD 1.x/2.x (diffusers' convert_state_dict_to_kohya
# and SDXL-style files write lora_te1_)
KOHYA_ALIASES = {"text_encoder": ("lora_te1_",)}


def is_diffusion(names: Iterable[str]) -> bool:
    """Whether adapter module names belong to a Stable Diffusion pipeline (all under unet / text_encoder(_2))."""
    return all(name.split(".", 1)[0] in COMPONENTS for name in names)


def split(name: str) -> tuple[str, str]:
    """`unet.down_blocks…` → ("unet", "down_blocks…")."""
    component, _, path = name.partition(".")
    return component, path


def sd_component(names: Iterable[str], folder: str = "") -> str | None:
    """The pipeline part a set of module paths (without `unet.` / `text_encoder.`) belongs to: "unet" for UNet
    paths, "text_encoder" / "text_encoder_2" for CLIP paths in a folder of that name; None for anything else
    (a text model)."""
    names = list(names)
    if names and all(name.startswith(UNET_TOP) for name in names):
        return "unet"
    if names and folder in TEXT_ENCODERS and all(name.startswith((CLIP_PREFIX, "encoder.layers.")) for name in names):
        return folder
    return None


def file_path(component: str, path: str) -> str:
    """A module's path as LoRA files write it: CLIP text-encoder paths under `text_model.`."""
    if component in TEXT_ENCODERS and not path.startswith(CLIP_PREFIX):
        return CLIP_PREFIX + path
    return path


def kohya_name(component: str, path: str, sdxl: bool = False) -> str:
    """`lora_unet_down_blocks_0_…` / `lora_te_text_model_encoder_…` (SDXL: `lora_te1_…`, `lora_te2_…`)."""
    return (SDXL_KOHYA_PREFIXES if sdxl else KOHYA_PREFIXES)[component] + file_path(component, path).replace(".", "_")


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
