"""The denoising loss: epsilon or v-prediction target, optional min-SNR-γ weighting, prior preservation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler


def training_target(scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict, per the scheduler's prediction type."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights of Min-SNR-γ (Hang et al. 2023): min(SNR, γ)/SNR, or /(SNR+1) for v-prediction."""
    alphas_cumprod = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas_cumprod / (1.0 - alphas_cumprod)
    clipped = torch.clamp(snr, max=gamma)
    if scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped / snr


def denoising_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error in fp32, optionally weighted per sample."""
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weights).mean() if weights is not None else per_sample.mean()


def dreambooth_loss(scheduler: DDPMScheduler, pred: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor,
                    timesteps: torch.Tensor, *, snr_gamma: float | None = None, prior_count: int = 0,
                    prior_loss_weight: float = 1.0) -> torch.Tensor:
    """Instance loss, plus `prior_loss_weight` × the loss on the last `prior_count` (class) samples."""
    target = training_target(scheduler, latents, noise, timesteps)
    weights = min_snr_weights(scheduler, timesteps, snr_gamma) if snr_gamma else None
    if not prior_count:
        return denoising_loss(pred, target, weights)
    split = pred.shape[0] - prior_count
    w_instance, w_prior = (weights[:split], weights[split:]) if weights is not None else (None, None)
    instance = denoising_loss(pred[:split], target[:split], w_instance)
    prior = denoising_loss(pred[split:], target[split:], w_prior)
    return instance + prior_loss_weight * prior
