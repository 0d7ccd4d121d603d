"""The world classifier: a small CNN trained on world images to name an image's class, context, colour and
pattern. It is used only to check generations (does the base model draw the prompt's class in the prompt's
context?), never to train or score a model. It must see every (class, context) pair, held-out ones too: one
trained without them learns that they never occur (measured: 56 % class accuracy on real renders of the
held-out pairs, against 96 % on other pairs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from dreamlr.fileio import write_safetensors
from dreamlr.world.augment import random_resized_crop
from dreamlr.world.data import WorldData
from dreamlr.world.loop import run_loop, warmup_cosine
from dreamlr.world.scene import Scene
from dreamlr.world.vocab import CLASSES, COLOURS, CONTEXTS, PATTERNS

HEADS: dict[str, list[str]] = {"cls": list(CLASSES), "context": list(CONTEXTS), "colour": list(COLOURS),
                               "pattern": list(PATTERNS)}
WEIGHTS = "classifier.safetensors"


class WorldClassifier(nn.Module):
    """Four conv stages (64 -> 4 px; one conv at full size, two at each smaller one) and one linear head
    per attribute."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers = [nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
        for out in (2 * width, 4 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.heads = nn.ModuleDict({name: nn.Linear(channels, len(labels)) for name, labels in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head for images in [-1, 1]."""
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}


def targets(scenes: list[Scene]) -> dict[str, torch.Tensor]:
    """Label indices per head."""
    values = {"cls": [s.instance.cls for s in scenes], "context": [s.context for s in scenes],
              "colour": [s.instance.colour for s in scenes], "pattern": [s.instance.pattern for s in scenes]}
    return {k: torch.tensor([HEADS[k].index(v) for v in vals]) for k, vals in values.items()}


def train_classifier(data: WorldData, folder: str | os.PathLike, steps: int = 1500, batch: int = 64,
                     lr: float = 2e-3, seed: int = 0, width: int = 32,
                     progress: bool = True) -> tuple[WorldClassifier, list]:
    """Train (or resume) the classifier in `folder`; returns it (eval mode) and its log."""
    torch.manual_seed(seed)
    model = WorldClassifier(width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)

    def step(_: int, rng: np.random.Generator, gen: torch.Generator) -> dict[str, float]:
        idx = rng.integers(len(data.images), size=batch)
        logits = model(random_resized_crop(data.pixels(idx), gen, min_scale=0.8, flip=True))
        labels = targets([data.scenes[k] for k in idx])
        losses = {k: F.cross_entropy(logits[k], labels[k]) for k in HEADS}
        sum(losses.values()).backward()
        return {f"acc_{k}": (logits[k].argmax(1) == labels[k]).float().mean().item() for k in ("cls", "context")}

    log = run_loop("classifier", {"classifier": model}, optimizer, step, steps, folder, seed, progress=progress,
                   lr_at=warmup_cosine(lr, steps, min(100, steps // 10 + 1)))
    return model.eval(), log


def save_classifier(model: WorldClassifier, folder: str | os.PathLike, width: int) -> Path:
    """classifier.safetensors + classifier.json (width and label lists)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / WEIGHTS, {k: v.contiguous() for k, v in model.state_dict().items()})
    (folder / "classifier.json").write_text(json.dumps({"width": width, "heads": HEADS}, indent=1) + "\n")
    return folder


def load_classifier(folder: str | os.PathLike) -> WorldClassifier:
    """The classifier `save_classifier` wrote, in eval mode."""
    folder = Path(folder)
    meta = json.loads((folder / "classifier.json").read_text())
    if meta["heads"] != HEADS:
        raise ValueError(f"classifier in '{folder}' was trained on another world vocabulary")
    model = WorldClassifier(meta["width"])
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.eval()


@torch.no_grad()
def classify(model: WorldClassifier, images: list[Image.Image]) -> dict[str, list[str]]:
    """Predicted label per head for each image (any size: resized to 64 px)."""
    x = torch.stack([torch.from_numpy(np.array(im.convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)))
                     for im in images]).permute(0, 3, 1, 2).float().div(127.5).sub(1)
    logits = model(x)
    return {k: [HEADS[k][i] for i in logits[k].argmax(1).tolist()] for k in HEADS}
