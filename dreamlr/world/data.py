"""The training set every world builder shares: `instances` random (non-subject) instances, each rendered in
`views` scenes (random pose and context), kept as uint8 pixels with their scenes. Views of one instance are
the positives of world-DINO's training; the diffusion model and world-CLIP see every image with a fresh
caption each time."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dreamlr.world.captions import caption
from dreamlr.world.sampling import sample_instance, sample_scene
from dreamlr.world.scene import Scene, render, scene_from_dict

IMAGES_FILE = "images.npy"
SCENES_FILE = "scenes.json"


@dataclass
class WorldData:
    """Pixels (N, 64, 64, 3) uint8, image k showing `scenes[k]`, of instance k // views."""

    images: np.ndarray
    scenes: list[Scene]
    views: int

    def captions(self, indices: np.ndarray, rng: np.random.Generator) -> list[str]:
        """Fresh captions of the given images."""
        return [caption(self.scenes[k], rng) for k in indices]

    def pixels(self, indices: np.ndarray) -> torch.Tensor:
        """Images as float (n, 3, 64, 64) in [-1, 1]."""
        return torch.from_numpy(self.images[indices]).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def build_data(seed: int, instances: int, views: int, progress: bool = True, heldout: bool = False) -> WorldData:
    """Render the training set (deterministic from `seed`); with `heldout`, the held-out (class, context)
    pairs are drawn too (for the world classifier, which must not learn that they never occur)."""
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(instances):
        instance = sample_instance(rng)
        scenes += [sample_scene(rng, instance=instance, heldout=heldout) for _ in range(views)]
    images = np.stack([np.asarray(render(s)) for s in tqdm(scenes, desc="render world", disable=not progress)])
    return WorldData(images, scenes, views)


def save_data(data: WorldData, folder: str | os.PathLike) -> None:
    """Write the set to `folder` (images.npy + scenes.json)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / IMAGES_FILE, data.images)
    (folder / SCENES_FILE).write_text(json.dumps({"views": data.views, "scenes": [s.to_dict() for s in data.scenes]}))


def load_data(folder: str | os.PathLike) -> WorldData:
    """The set `save_data` wrote."""
    folder = Path(folder)
    meta = json.loads((folder / SCENES_FILE).read_text())
    return WorldData(np.load(folder / IMAGES_FILE), [scene_from_dict(s) for s in meta["scenes"]], meta["views"])
