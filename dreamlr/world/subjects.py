"""The world's subjects written as a DreamBooth dataset: one folder of 4-6 images per subject (the instance
in varied pose and context), `prompts_and_classes.txt` in google/dreambooth's layout with the world's prompt
lists, and those lists as plain prompt files (`prompts_object.txt`, `prompts_live.txt`) for `--prompts`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from dreamlr.world.instances import HELDOUT_PAIRS, SUBJECTS
from dreamlr.world.prompts import WORLD_LIVE_PROMPTS, WORLD_OBJECT_PROMPTS, google_format
from dreamlr.world.sampling import sample_scene
from dreamlr.world.scene import Scene, render
from dreamlr.world.vocab import CLASSES

IMAGES_PER_SUBJECT = 5
# contexts of reference photos: everyday backdrops, none of the 25 prompts' scenes
REFERENCE_CONTEXTS = ("studio", "table", "wooden_floor", "white_rug")
INDEX = "prompts_and_classes.txt"
MANIFEST = "subjects.json"


def subject_scenes(name: str, seed: int = 0, count: int = IMAGES_PER_SUBJECT) -> list[Scene]:
    """The reference scenes of subject `name`: its instance in `count` poses, cycling the reference contexts
    (less any held out of training for its class)."""
    instance = SUBJECTS[name]
    rng = np.random.default_rng([seed, list(SUBJECTS).index(name)])
    usable = [c for c in REFERENCE_CONTEXTS if (instance.cls, c) not in HELDOUT_PAIRS]
    contexts = [usable[(k + len(name)) % len(usable)] for k in range(count)]
    return [sample_scene(rng, instance=instance, context=c, heldout=True, dressed=False) for c in contexts]


def index_text() -> str:
    """prompts_and_classes.txt: the subjects' class nouns and the world's two prompt lists."""
    classes = "\n".join(f"{name},{CLASSES[inst.cls]}" for name, inst in SUBJECTS.items())
    return (f"Classes\n\nsubject_name,class\n{classes}\n\nPrompts\n\nObject Prompts\n\n"
            f"{google_format(WORLD_OBJECT_PROMPTS)}\nLive Subject Prompts\n\n{google_format(WORLD_LIVE_PROMPTS)}")


def write_subjects(out: str | os.PathLike, seed: int = 0, count: int = IMAGES_PER_SUBJECT) -> Path:
    """Write every subject's folder (`00.png`…), the index, the prompt files and `subjects.json` (each
    image's scene) under `out`; returns `out`. Rewriting gives identical files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for name in SUBJECTS:
        folder = out / name
        folder.mkdir(exist_ok=True)
        scenes = subject_scenes(name, seed, count)
        for k, scene in enumerate(scenes):
            render(scene).save(folder / f"{k:02d}.png")
        manifest[name] = [s.to_dict() for s in scenes]
    (out / INDEX).write_text(index_text(), encoding="utf-8")
    (out / "prompts_object.txt").write_text("\n".join(WORLD_OBJECT_PROMPTS) + "\n", encoding="utf-8")
    (out / "prompts_live.txt").write_text("\n".join(WORLD_LIVE_PROMPTS) + "\n", encoding="utf-8")
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return out

