"""Stage 1: the world's AutoencoderKL (64 px <-> 8x8x4), trained on world images with an L1 + MSE
reconstruction loss and a small KL term; its `scaling_factor` is then set to 1 / std of the latents, as
Stable Diffusion's is."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from dreamlr.world.architectures import build_vae
from dreamlr.world.data import WorldData
from dreamlr.world.loop import run_loop, warmup_cosine

KL_WEIGHT = 1e-5


def train_vae(data: WorldData, folder: str | os.PathLike, size: str = "full", steps: int = 2000,
              batch: int = 32, lr: float = 1e-3, seed: int = 0, progress: bool = True) -> tuple[AutoencoderKL, list]:
    """Train (or resume) the VAE in `folder`; returns it (eval mode, scaling factor set) and its log."""
    torch.manual_seed(seed)
    vae = build_vae(size)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)

    def step(_: int, rng: np.random.Generator, gen: torch.Generator) -> dict[str, float]:
        x = data.pixels(rng.integers(len(data.images), size=batch))
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, x)
        loss = mse + F.l1_loss(recon, x) + KL_WEIGHT * posterior.kl().mean()
        loss.backward()
        return {"loss": loss.item(), "mse": mse.item()}

    log = run_loop("vae", {"vae": vae}, optimizer, step, steps, folder, seed, progress=progress,
                   lr_at=warmup_cosine(lr, steps, min(100, steps // 10 + 1)))
    vae.eval()
    vae.register_to_config(scaling_factor=latent_scale(vae, data))
    return vae, log


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, data: WorldData, count: int = 512) -> float:
    """1 / std of the latent means of up to `count` images."""
    x = data.pixels(np.arange(min(count, len(data.images))))
    return float(1.0 / vae.encode(x).latent_dist.mean.std())


@torch.no_grad()
def encode_all(vae: AutoencoderKL, data: WorldData, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent means and stds (N, 4, 8, 8) of every image, unscaled."""
    means, stds = [], []
    for k in range(0, len(data.images), batch):
        posterior = vae.encode(data.pixels(np.arange(k, min(k + batch, len(data.images))))).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)
