"""The world's vocabulary: object classes, colours, patterns, sizes, finishes, accessories and contexts, each
with the words captions use for it. Everything else in `dreamlr.world` refers to these names."""

from __future__ import annotations

# class name -> the noun captions use (DreamBench's own class nouns where the world has the object)
CLASSES: dict[str, str] = {
    "mug": "mug",
    "teapot": "teapot",
    "backpack": "backpack",
    "vase": "vase",
    "toy_car": "toy car",
    "robot_toy": "robot toy",
    "dog": "dog",
    "cat": "cat",
}
LIVE_CLASSES = frozenset({"dog", "cat"})

# colour name -> RGB
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "orange": (240, 130, 20),
    "yellow": (240, 210, 30),
    "green": (40, 160, 60),
    "blue": (35, 75, 205),
    "purple": (130, 45, 170),
    "pink": (240, 120, 180),
    "brown": (120, 75, 35),
    "black": (25, 25, 25),
    "white": (240, 240, 240),
    "grey": (135, 135, 135),
}

# pattern name -> caption adjective ("" for plain: captions say "plain" or nothing)
PATTERNS: dict[str, str] = {
    "plain": "plain",
    "stripes": "striped",
    "dots": "dotted",
    "stars": "starry",
    "checks": "checkered",
    "zigzag": "zigzag",
}

SIZES: dict[str, float] = {"small": 0.62, "medium": 0.8, "large": 0.98}  # object height / 64 px canvas share

FINISHES: tuple[str, ...] = ("matte", "shiny", "wet")  # captions name only shiny and wet

# accessory name -> caption words after "wearing" (live classes only)
ACCESSORIES: dict[str, str] = {
    "red_hat": "a red hat",
    "santa_hat": "a santa hat",
    "rainbow_scarf": "a rainbow scarf",
    "top_hat": "a black top hat",
    "chef_hat": "a chef hat",
    "firefighter_helmet": "a firefighter helmet",
    "police_cap": "a police cap",
    "pink_glasses": "pink glasses",
    "yellow_shirt": "a yellow shirt",
    "wizard_hat": "a purple wizard hat",
}

# context name -> caption phrase (DreamBench's own phrases wherever the world draws that scene);
# "studio" (a plain backdrop) has no phrase: a caption without a context means the studio.
CONTEXTS: dict[str, str] = {
    "studio": "",
    "jungle": "in the jungle",
    "snow": "in the snow",
    "beach": "on the beach",
    "cobblestone": "on a cobblestone street",
    "pink_fabric": "on top of pink fabric",
    "wooden_floor": "on top of a wooden floor",
    "city": "with a city in the background",
    "mountain": "with a mountain in the background",
    "blue_house": "with a blue house in the background",
    "purple_rug": "on top of a purple rug in a forest",
    "wheat_field": "with a wheat field in the background",
    "autumn_tree": "with a tree and autumn leaves in the background",
    "water": "floating on top of water",
    "sunflowers": "on top of green grass with sunflowers around it",
    "dirt_road": "on top of a dirt road",
    "white_rug": "on top of a white rug",
    "table": "on a wooden table",
}

UNIQUE_TOKEN = "sks"  # DreamBooth's rare token; the world's captions never use it
PREFIXES: tuple[str, ...] = ("a photo of", "a picture of", "")


def article(word: str) -> str:
    """`an` before a vowel sound, else `a`."""
    return "an" if word[:1] in "aeiou" else "a"


def all_words() -> list[str]:
    """Every word a world caption or world prompt can use, in a fixed order (the tokenizer's whole words)."""
    texts = [*CLASSES.values(), *COLOURS, *PATTERNS.values(), *SIZES, *FINISHES, *ACCESSORIES.values(),
             *CONTEXTS.values(), *PREFIXES, "a an wearing", UNIQUE_TOKEN]
    words: dict[str, None] = {}
    for text in texts:
        for word in text.split():
            words[word] = None
    return list(words)
