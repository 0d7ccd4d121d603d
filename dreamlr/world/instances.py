"""What the world model never sees: the subjects' instances (class + colour + pattern) and the
(class, context) pairs held out of training for the base model's composition benchmark."""

from __future__ import annotations

from dreamlr.world.scene import Instance

# subject folder name -> (class noun as DreamBench's prompts_and_classes.txt gives it, the instance);
# names follow DreamBench's where it has that object, and `mug` is the demo subject's red mug with yellow stripes
SUBJECTS: dict[str, Instance] = {
    "mug": Instance("mug", "red", "stripes", "yellow"),
    "mug2": Instance("mug", "blue", "dots", "white"),
    "teapot": Instance("teapot", "green", "stars", "yellow"),
    "backpack": Instance("backpack", "orange", "checks", "black"),
    "vase": Instance("vase", "purple", "zigzag", "white"),
    "rc_car": Instance("toy_car", "yellow", "stripes", "black"),
    "robot_toy": Instance("robot_toy", "grey", "checks", "red"),
    "dog": Instance("dog", "brown", "dots", "white"),
    "dog2": Instance("dog", "white", "stars", "blue"),
    "cat": Instance("cat", "black", "stripes", "orange"),
}
RESERVED = frozenset((i.cls, i.colour, i.pattern) for i in SUBJECTS.values())

# (class, context) pairs never in the world model's training images: the benchmark asks for them
HELDOUT_PAIRS = frozenset({
    ("mug", "snow"), ("teapot", "beach"), ("backpack", "jungle"), ("vase", "city"),
    ("toy_car", "blue_house"), ("robot_toy", "purple_rug"), ("dog", "wooden_floor"), ("cat", "cobblestone"),
})


def is_reserved(instance: Instance) -> bool:
    """Whether this instance's class, colour and pattern are a subject's (never shown to the world model)."""
    return (instance.cls, instance.colour, instance.pattern) in RESERVED
