"""Stage 3: world-CLIP, open_clip's own CLIP class (ModifiedResNet image tower, text tower over the world tokenizer),
trained contrastively (symmetric InfoNCE, learned temperature) on world images and fresh captions, and saved
as an open_clip model folder (`open_clip_config.json`, `open_clip_model.safetensors`, tokenizer files) that
`open_clip.create_model("local-dir:FOLDER")` and `--clip FOLDER` load."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from dreamlr.fileio import write_safetensors
from dreamlr.world.architectures import CLIP_CONTEXT, clip_config
from dreamlr.world.augment import normalize, random_resized_crop
from dreamlr.world.data import WorldData
from dreamlr.world.loop import run_loop, warmup_cosine
from dreamlr.world.tokenizer import save_tokenizer, world_tokenizer

MEAN, STD = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
WEIGHTS = "open_clip_model.safetensors"


def train_clip(data: WorldData, folder: str | os.PathLike, size: str = "full", steps: int = 3000,
               batch: int = 128, lr: float = 5e-4, seed: int = 0,
               progress: bool = True) -> tuple[open_clip.CLIP, list]:
    """Train (or resume) world-CLIP in `folder`; returns the model (eval mode) and its log."""
    torch.manual_seed(seed)
    tokenizer = world_tokenizer()
    model = open_clip.CLIP(**clip_config(len(tokenizer), size))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)

    def step(_: int, rng: np.random.Generator, gen: torch.Generator) -> dict[str, float]:
        idx = rng.integers(len(data.images), size=batch)
        texts = data.captions(idx, rng)
        ids = tokenizer(texts, padding="max_length", max_length=CLIP_CONTEXT, truncation=True,
                        return_tensors="pt").input_ids
        pixels = normalize(random_resized_crop(data.pixels(idx), gen, min_scale=0.7), MEAN, STD)
        img, txt, scale = model(pixels, ids)[:3]
        logits = scale * img @ txt.T
        # captions repeat within a batch: an image matches every identical caption
        same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32)
        target = same / same.sum(1, keepdim=True)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        loss.backward()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        return {"loss": loss.item(), "acc": (logits.argmax(1) == torch.arange(batch)).float().mean().item()}

    log = run_loop("clip", {"clip": model}, optimizer, step, steps, folder, seed, progress=progress,
                   lr_at=warmup_cosine(lr, steps, min(200, steps // 10 + 1)))
    return model.eval(), log


def save_clip(model: open_clip.CLIP, size: str, folder: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write world-CLIP as an open_clip model folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_tokenizer(folder)
    config = {"model_cfg": clip_config(len(world_tokenizer()), size),
              "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic",
                                 "resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=1) + "\n")
    write_safetensors(folder / WEIGHTS, {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()})
    return folder
