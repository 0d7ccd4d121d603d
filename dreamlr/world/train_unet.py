"""Stage 2: the world's text-to-image model: a UNet2DConditionModel and a CLIPTextModel over the world
tokenizer, trained together from scratch on VAE latents with epsilon prediction on Stable Diffusion's noise
schedule; captions are dropped (to "") `CAPTION_DROPOUT` of the time so classifier-free guidance works."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline

from dreamlr.world.architectures import SCHEDULE, build_scheduler, build_text_encoder, build_unet
from dreamlr.world.data import WorldData
from dreamlr.world.loop import run_loop, warmup_cosine
from dreamlr.world.tokenizer import world_tokenizer

CAPTION_DROPOUT = 0.1


def train_unet(data: WorldData, vae: AutoencoderKL, latents: tuple[torch.Tensor, torch.Tensor],
               folder: str | os.PathLike, size: str = "full", steps: int = 10000, batch: int = 64,
               lr: float = 5e-4, seed: int = 0, progress: bool = True) -> tuple[StableDiffusionPipeline, list]:
    """Train (or resume) UNet + text encoder in `folder` on the images' latents (means, stds); returns the
    pipeline (the given VAE, DDIM sampling) and the log."""
    torch.manual_seed(seed)
    tokenizer = world_tokenizer()
    text_encoder, unet = build_text_encoder(tokenizer, size), build_unet(size)
    noise_scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULE.items() if k != "set_alpha_to_one"})
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    means, stds = latents
    scale = vae.config.scaling_factor

    def step(_: int, rng: np.random.Generator, gen: torch.Generator) -> dict[str, float]:
        idx = rng.integers(len(means), size=batch)
        texts = ["" if rng.random() < CAPTION_DROPOUT else c for c in data.captions(idx, rng)]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        z = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * scale
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=gen)
        pred = unet(noise_scheduler.add_noise(z, noise, t), t, text_encoder(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        return {"loss": loss.item()}

    log = run_loop("unet", {"unet": unet, "text_encoder": text_encoder}, optimizer, step, steps, folder, seed,
                   progress=progress, lr_at=warmup_cosine(lr, steps, min(500, steps // 10 + 1)))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer,
                                   unet=unet.eval(), scheduler=build_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return pipe, log
