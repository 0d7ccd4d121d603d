"""World versions of DreamBench's 25 object and 25 live-subject prompts: the same prompt wherever the world
draws that scene, else the nearest thing the world can draw (the mapping is `SUBSTITUTES`). Templates use
`{token}` and `{class}`, as `dreamlr.evaluation.dreambench` does."""

from __future__ import annotations

from dreamlr.evaluation.dreambench import LIVE_PROMPTS, OBJECT_PROMPTS
from dreamlr.world.vocab import UNIQUE_TOKEN

# DreamBench prompt -> the world prompt that stands for it (every other DreamBench prompt is kept as it is)
SUBSTITUTES: dict[str, str] = {
    "a {token} {class} with the Eiffel Tower in the background": "a {token} {class} on a wooden table",
    "a {token} {class} floating in an ocean of milk": "a small {token} {class}",
    "a {token} {class} on top of a mirror": "a large {token} {class}",
    "a {token} {class} on top of the sidewalk in a crowded street": "a photo of a {token} {class}",
    "a cube shaped {token} {class}": "a dotted {token} {class}",
    "a {token} {class} wearing a black top hat and a monocle": "a {token} {class} wearing a black top hat",
    "a {token} {class} in a chef outfit": "a {token} {class} wearing a chef hat",
    "a {token} {class} in a firefighter outfit": "a {token} {class} wearing a firefighter helmet",
    "a {token} {class} in a police outfit": "a {token} {class} wearing a police cap",
    "a {token} {class} in a purple wizard outfit": "a {token} {class} wearing a purple wizard hat",
}

WORLD_OBJECT_PROMPTS: tuple[str, ...] = tuple(SUBSTITUTES.get(p, p) for p in OBJECT_PROMPTS)
WORLD_LIVE_PROMPTS: tuple[str, ...] = tuple(SUBSTITUTES.get(p, p) for p in LIVE_PROMPTS)
WORLD_PROMPT_LISTS: dict[str, tuple[str, ...]] = {"object": WORLD_OBJECT_PROMPTS, "live": WORLD_LIVE_PROMPTS}


def fill(template: str, class_noun: str, token: str = UNIQUE_TOKEN) -> str:
    """A template with its token and class filled in."""
    return template.replace("{token}", token).replace("{class}", class_noun)


def google_format(templates: tuple[str, ...]) -> str:
    """A prompt list written as google/dreambooth's prompts_and_classes.txt writes one."""
    rows = [f"'{t.replace('{token}', '{0}').replace('{class}', '{1}')}'.format(unique_token, class_token)"
            for t in templates]
    return "prompt_list = [\n" + ",\n".join(rows) + "\n]\n"
