"""Stage 4: world-DINO, a timm VisionTransformer trained self-supervised, SimCLR-style: two views of one
instance (different scenes: pose, size, context) are pulled together and every other image in the batch,
same-class instances included, pushed apart (NT-Xent on a projection head that is not kept). So it tells
two mugs apart that CLIP, trained on captions that never name an instance's ink colour, calls alike. Saved
as a timm model folder (`config.json`, `model.safetensors`) that `timm.create_model("local-dir:FOLDER")`
and `--dino FOLDER` load."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import save_for_hf

from dreamlr.world.architectures import DINO_BASE_ARCH, dino_args
from dreamlr.world.augment import normalize, random_resized_crop
from dreamlr.world.data import WorldData
from dreamlr.world.loop import run_loop, warmup_cosine
from dreamlr.world.scene import IMAGE_SIZE

TEMPERATURE = 0.1


def build_dino(size: str = "full") -> torch.nn.Module:
    """A fresh world-DINO with its timm pretrained config (64 px input, ImageNet normalization)."""
    return timm.create_model(DINO_BASE_ARCH, pretrained=False, **dino_args(size), pretrained_cfg_overlay=dict(
        input_size=(3, IMAGE_SIZE, IMAGE_SIZE), mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
        crop_pct=224 / 256, interpolation="bicubic", num_classes=0))


def train_dino(data: WorldData, folder: str | os.PathLike, size: str = "full", steps: int = 3000,
               batch: int = 128, lr: float = 5e-4, seed: int = 0,
               progress: bool = True) -> tuple[torch.nn.Module, list]:
    """Train (or resume) world-DINO in `folder`; returns the backbone (eval mode) and its log."""
    torch.manual_seed(seed)
    model = build_dino(size)
    width = model.num_features
    head = torch.nn.Sequential(torch.nn.Linear(width, 2 * width), torch.nn.GELU(), torch.nn.Linear(2 * width, 128))
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.05)
    instances = len(data.images) // data.views

    def step(_: int, rng: np.random.Generator, gen: torch.Generator) -> dict[str, float]:
        chosen = rng.choice(instances, size=batch, replace=False)
        pair = np.stack([rng.choice(data.views, size=2, replace=False) for _ in chosen])
        idx = np.concatenate([chosen * data.views + pair[:, 0], chosen * data.views + pair[:, 1]])
        x = normalize(random_resized_crop(data.pixels(idx), gen), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
        z = F.normalize(head(model(x)), dim=1)
        sim = z @ z.T / TEMPERATURE
        sim.fill_diagonal_(float("-inf"))
        target = torch.cat([torch.arange(batch, 2 * batch), torch.arange(batch)])
        loss = F.cross_entropy(sim, target)
        loss.backward()
        return {"loss": loss.item(), "acc": (sim.argmax(1) == target).float().mean().item()}

    log = run_loop("dino", {"dino": model, "head": head}, optimizer, step, steps, folder, seed, progress=progress,
                   lr_at=warmup_cosine(lr, steps, min(200, steps // 10 + 1)))
    return model.eval(), log


def save_dino(model: torch.nn.Module, size: str, folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write world-DINO as a timm model folder."""
    folder = Path(folder)
    copy = build_dino(size)
    copy.load_state_dict(model.state_dict())
    save_for_hf(copy.to(dtype), str(folder), model_args=dino_args(size), safe_serialization=True)
    return folder
