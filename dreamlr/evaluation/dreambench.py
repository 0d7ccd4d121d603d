"""The DreamBench protocol's fixed parts: its 30 subjects with their classes, its two 25-prompt lists,
the default encoders and the number of images per prompt.

Prompts are templates with `{token}` (the rare token, e.g. `sks`) and `{class}` (the class noun,
e.g. `dog`), in the order of the DreamBooth dataset's `prompts_and_classes.txt`.
"""

from __future__ import annotations

CLIP_DEFAULT = "ViT-B-32:openai"  # open_clip ARCH:PRETRAINED for CLIP-I and CLIP-T
DINO_DEFAULT = "vit_small_patch16_224.dino"  # timm name for DINO (ViT-S/16)
IMAGES_PER_PROMPT = 4

# subject folder name -> class noun, as published with the DreamBooth dataset
SUBJECT_CLASSES: dict[str, str] = {
    "backpack": "backpack",
    "backpack_dog": "backpack",
    "bear_plushie": "stuffed animal",
    "berry_bowl": "bowl",
    "can": "can",
    "candle": "candle",
    "cat": "cat",
    "cat2": "cat",
    "clock": "clock",
    "colorful_sneaker": "sneaker",
    "dog": "dog",
    "dog2": "dog",
    "dog3": "dog",
    "dog5": "dog",
    "dog6": "dog",
    "dog7": "dog",
    "dog8": "dog",
    "duck_toy": "toy",
    "fancy_boot": "boot",
    "grey_sloth_plushie": "stuffed animal",
    "monster_toy": "toy",
    "pink_sunglasses": "glasses",
    "poop_emoji": "toy",
    "rc_car": "toy",
    "red_cartoon": "cartoon",
    "robot_toy": "toy",
    "shiny_sneaker": "sneaker",
    "teapot": "teapot",
    "vase": "vase",
    "wolf_plushie": "stuffed animal",
}

# classes whose subjects get the live-subject prompt list
LIVE_CLASSES: frozenset[str] = frozenset({"cat", "dog"})

_SCENES = [
    "a {token} {class} in the jungle",
    "a {token} {class} in the snow",
    "a {token} {class} on the beach",
    "a {token} {class} on a cobblestone street",
    "a {token} {class} on top of pink fabric",
    "a {token} {class} on top of a wooden floor",
    "a {token} {class} with a city in the background",
    "a {token} {class} with a mountain in the background",
    "a {token} {class} with a blue house in the background",
    "a {token} {class} on top of a purple rug in a forest",
]
_OBJECT_ONLY = [
    "a {token} {class} with a wheat field in the background",
    "a {token} {class} with a tree and autumn leaves in the background",
    "a {token} {class} with the Eiffel Tower in the background",
    "a {token} {class} floating on top of water",
    "a {token} {class} floating in an ocean of milk",
    "a {token} {class} on top of green grass with sunflowers around it",
    "a {token} {class} on top of a mirror",
    "a {token} {class} on top of the sidewalk in a crowded street",
    "a {token} {class} on top of a dirt road",
    "a {token} {class} on top of a white rug",
]
_LIVE_ONLY = [
    "a {token} {class} wearing a red hat",
    "a {token} {class} wearing a santa hat",
    "a {token} {class} wearing a rainbow scarf",
    "a {token} {class} wearing a black top hat and a monocle",
    "a {token} {class} in a chef outfit",
    "a {token} {class} in a firefighter outfit",
    "a {token} {class} in a police outfit",
    "a {token} {class} wearing pink glasses",
    "a {token} {class} wearing a yellow shirt",
    "a {token} {class} in a purple wizard outfit",
]
_PROPERTIES = [
    "a red {token} {class}",
    "a purple {token} {class}",
    "a shiny {token} {class}",
    "a wet {token} {class}",
    "a cube shaped {token} {class}",
]

OBJECT_PROMPTS: tuple[str, ...] = tuple(_SCENES + _OBJECT_ONLY + _PROPERTIES)
LIVE_PROMPTS: tuple[str, ...] = tuple(_SCENES + _LIVE_ONLY + _PROPERTIES)
PROMPT_LISTS: dict[str, tuple[str, ...]] = {"object": OBJECT_PROMPTS, "live": LIVE_PROMPTS}


def is_live(class_name: str) -> bool:
    """Whether DreamBench treats subjects of this class as live (they get the live-subject prompts)."""
    return class_name.strip().lower() in LIVE_CLASSES


def prompt_templates(kind: str) -> tuple[str, ...]:
    """The 25 prompt templates of one DreamBench list: `object` or `live`."""
    if kind not in PROMPT_LISTS:
        raise KeyError(f"unknown DreamBench prompt list {kind!r}; choose one of {', '.join(PROMPT_LISTS)}")
    return PROMPT_LISTS[kind]
