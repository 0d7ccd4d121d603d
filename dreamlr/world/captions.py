"""The caption grammar: how a scene is described, and how a caption (or a world prompt) is read back.

    caption  := [prefix] article [size] [finish] [colour] [pattern] [token] noun [wearing accessory] [context]
    prefix   := "a photo of" | "a picture of"
    article  := "a" | "an"

e.g. `a photo of a red striped mug on the beach`, `a large shiny teapot`, `a sks dog wearing a red hat in
the snow`. Each attribute is named with some probability (the model learns both the attribute and what an
unnamed attribute looks like); class is always named, context unless it is the studio backdrop.
"""

from __future__ import annotations

import re

import numpy as np

from dreamlr.world.scene import Scene
from dreamlr.world.vocab import ACCESSORIES, CLASSES, COLOURS, CONTEXTS, PATTERNS, SIZES, article

# probability that a caption names each attribute (when it is not the default)
# the context is left out of 40 % of captions, as real captions often leave it out: a caption without one must
# then read as any context (measured: at 0.9, world-CLIP read `a photo of a mug` as a studio backdrop and
# matched the class among the 8 class captions in 21 % of images)
P_SIZE, P_FINISH, P_COLOUR, P_PATTERN, P_PLAIN, P_ACCESSORY, P_CONTEXT = 0.3, 0.8, 0.75, 0.7, 0.3, 0.95, 0.6


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A caption of the scene, its optional parts drawn from `rng`."""
    inst = scene.instance
    words = []
    if rng.random() < P_SIZE:
        words.append(scene.size)
    if scene.finish != "matte" and rng.random() < P_FINISH:
        words.append(scene.finish)
    if rng.random() < P_COLOUR:
        words.append(inst.colour)
    if rng.random() < (P_PLAIN if inst.pattern == "plain" else P_PATTERN):
        words.append(PATTERNS[inst.pattern])
    words.append(CLASSES[inst.cls])
    if scene.accessory is not None and rng.random() < P_ACCESSORY:
        words += ["wearing", ACCESSORIES[scene.accessory]]
    if scene.context != "studio" and rng.random() < P_CONTEXT:
        words.append(CONTEXTS[scene.context])
    prefix = ("a photo of", "a picture of", "")[rng.choice(3, p=[0.5, 0.2, 0.3])]
    return " ".join(filter(None, [prefix, article(words[0]), *words]))


def describe(scene: Scene, token: str | None = None, colour: bool = True, pattern: bool = True) -> str:
    """The fixed, full caption of a scene (no randomness): `a [token] <colour> <pattern> <class> …`."""
    inst = scene.instance
    words = [scene.size] if scene.size != "medium" else []
    if scene.finish != "matte":
        words.append(scene.finish)
    if colour:
        words.append(inst.colour)
    if pattern and inst.pattern != "plain":
        words.append(PATTERNS[inst.pattern])
    if token:
        words.append(token)
    words.append(CLASSES[inst.cls])
    if scene.accessory is not None:
        words += ["wearing", ACCESSORIES[scene.accessory]]
    if scene.context != "studio":
        words.append(CONTEXTS[scene.context])
    return " ".join([article(words[0]), *words])


def _alternation(table: dict[str, str]) -> str:
    """A regex group matching any phrase of `table` (longest first), capturing the phrase."""
    phrases = sorted((p for p in table.values() if p), key=len, reverse=True)
    return "(" + "|".join(re.escape(p) for p in phrases) + ")"


_GRAMMAR = re.compile(
    r"^(?:(?P<prefix>a photo of|a picture of) )?(?:a|an) "
    rf"(?:(?P<size>{'|'.join(SIZES)}) )?"
    r"(?:(?P<finish>shiny|wet) )?"
    rf"(?:(?P<colour>{'|'.join(sorted(COLOURS, key=len, reverse=True))}) )?"
    rf"(?:(?P<pattern>{_alternation(PATTERNS)[1:-1]}) )?"
    r"(?:(?P<token>\S+) )??"
    rf"(?P<noun>{_alternation(CLASSES)[1:-1]})"
    rf"(?: wearing (?P<accessory>{_alternation(ACCESSORIES)[1:-1]}))?"
    rf"(?: (?P<context>{_alternation(CONTEXTS)[1:-1]}))?$"
)
_BY_NOUN = {noun: name for name, noun in CLASSES.items()}
_BY_PATTERN = {adj: name for name, adj in PATTERNS.items()}
_BY_ACCESSORY = {words: name for name, words in ACCESSORIES.items()}
_BY_CONTEXT = {phrase: name for name, phrase in CONTEXTS.items() if phrase}


def parse_caption(text: str) -> dict[str, str | None]:
    """The attributes a caption or world prompt names: cls, colour, pattern, size, finish, accessory,
    context (None where it names none; context None means the studio or unnamed) and token (a word between
    the adjectives and the noun, e.g. `sks`). A text outside the grammar is a ValueError."""
    match = _GRAMMAR.match(" ".join(text.strip().split()))
    if match is None:
        raise ValueError(f"not a world caption: {text!r}")
    found = match.groupdict()
    return {
        "cls": _BY_NOUN[found["noun"]],
        "colour": found["colour"],
        "pattern": _BY_PATTERN[found["pattern"]] if found["pattern"] else None,
        "size": found["size"],
        "finish": found["finish"],
        "accessory": _BY_ACCESSORY[found["accessory"]] if found["accessory"] else None,
        "context": _BY_CONTEXT[found["context"]] if found["context"] else None,
        "token": found["token"],
    }


def is_world_text(text: str) -> bool:
    """Whether `text` follows the caption grammar."""
    return _GRAMMAR.match(" ".join(text.strip().split())) is not None

