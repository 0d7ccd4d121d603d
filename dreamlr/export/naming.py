"""Module names across formats: dreamlr's `unet.` / `text_encoder.` paths, LoRA files' CLIP names, kohya names.

A Stable Diffusion adapter names modules `unet.<path>` and `text_encoder.<path>` (the trainer
saves from a ModuleDict of the two); a text-model adapter names them as the model does. LoRA files
spell CLIP text-encoder modules `text_model.encoder…` (recent transformers flatten CLIPTextModel to
`encoder…`), and kohya writes `lora_unet_` / `lora_te_` + the path with `_` for `.`.
"""

from __future__ import annotations

from collections.abc import Iterable

COMPONENTS = ("unet", "text_encoder")
CLIP_PREFIX = "text_model."
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}


def is_diffusion(names: Iterable[str]) -> bool:
    """Whether adapter module names belong to a Stable Diffusion pipeline (all under unet / text_encoder)."""
    return all(name.split(".", 1)[0] in COMPONENTS for name in names)


def split(name: str) -> tuple[str, str]:
    """`unet.down_blocks…` → ("unet", "down_blocks…")."""
    component, _, path = name.partition(".")
    return component, path


def file_path(component: str, path: str) -> str:
    """A module's path as LoRA files write it: CLIP text-encoder paths under `text_model.`."""
    if component == "text_encoder" and not path.startswith(CLIP_PREFIX):
        return CLIP_PREFIX + path
    return path


def kohya_name(component: str, path: str) -> str:
    """`lora_unet_down_blocks_0_…` / `lora_te_text_model_encoder_…`."""
    return KOHYA_PREFIXES[component] + file_path(component, path).replace(".", "_")


class ModuleIndex:
    """Finds a model's module from the name a LoRA file gives it (dotted or kohya)."""

    def __init__(self, names: Iterable[str], diffusion: bool) -> None:
        self.dotted: dict[str, str] = {}
        self.kohya: dict[str, str] = {}
        for name in names:
            self.dotted[name] = name
            if diffusion and name.split(".", 1)[0] in COMPONENTS:
                component, path = split(name)
                self.dotted.setdefault(f"{component}.{file_path(component, path)}", name)
                self.kohya[kohya_name(component, path)] = name

    def find(self, file_name: str, kohya: bool = False) -> str | None:
        """The model's module name for `file_name`, or None when the model has no such module."""
        return (self.kohya if kohya else self.dotted).get(file_name)
