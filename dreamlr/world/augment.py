"""Image augmentations for the encoders' training, on batches in [-1, 1], drawn from a torch Generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_resized_crop(x: torch.Tensor, gen: torch.Generator, min_scale: float = 0.6,
                        flip: bool = True) -> torch.Tensor:
    """Each image: a random square crop of `min_scale`..1 of its area, resized back, mirrored half the time."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    scales = min_scale + (1 - min_scale) * torch.rand(n, generator=gen)
    offsets = torch.rand(n, 2, generator=gen)
    flips = torch.rand(n, generator=gen) < 0.5
    for k in range(n):
        side = max(8, round(h * float(scales[k]) ** 0.5))
        top, left = int(offsets[k, 0] * (h - side)), int(offsets[k, 1] * (w - side))
        crop = x[k:k + 1, :, top:top + side, left:left + side]
        crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        out[k] = crop[0].flip(-1) if flip and flips[k] else crop[0]
    return out


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """[-1, 1] pixels -> the encoder's normalization ((x01 - mean) / std)."""
    mean_t = torch.tensor(mean).view(1, -1, 1, 1)
    std_t = torch.tensor(std).view(1, -1, 1, 1)
    return ((x + 1) / 2 - mean_t) / std_t
