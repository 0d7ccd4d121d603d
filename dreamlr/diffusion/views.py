"""Training views, encoded once: every image's VAE posterior (one view, or four random crops/flips when
augmenting), grouped by latent size (one group without buckets), each with its prompt and its draw weight
(its subset's `repeats`). Every draw comes from the step's generator."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import NamedTuple

import torch

from dreamlr.diffusion.buckets import Buckets, upscale_factor
from dreamlr.diffusion.concepts import Subset
from dreamlr.diffusion.data import DreamBoothDataset


class Views(NamedTuple):
    """A micro-batch: latents (one size), their prompts, and their SDXL `time_ids` (B×6)."""

    latents: torch.Tensor
    prompts: list[str]
    time_ids: torch.Tensor

    def joined(self, other: Views) -> Views:
        return Views(torch.cat([self.latents, other.latents]), self.prompts + other.prompts,
                     torch.cat([self.time_ids, other.time_ids]))


@dataclass
class LatentCache:
    """VAE posteriors (mean, std) of views of one latent size, the prompt of each view and its `time_ids`."""

    mean: torch.Tensor
    std: torch.Tensor
    prompts: list[str]
    time_ids: torch.Tensor

    def sample(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(self.mean[indices].shape, generator=generator).to(self.mean.device)
        return self.mean[indices] + self.std[indices] * noise


@dataclass
class ViewPool:
    """Views grouped by latent size, with a draw weight per view."""

    groups: list[LatentCache]
    weights: list[torch.Tensor]

    def draw(self, batch: int, generator: torch.Generator) -> Views:
        """A micro-batch of `batch` latents (one size) and their prompts. With one group of equal weights
        this is a uniform draw with replacement; otherwise a group is drawn by its total weight, then views
        within it by weight."""
        if len(self.groups) == 1 and bool((self.weights[0] == self.weights[0][0]).all()):
            group = self.groups[0]
            indices = torch.randint(0, len(group.prompts), (batch,), generator=generator)
        else:
            totals = torch.stack([w.sum() for w in self.weights])
            chosen = int(torch.multinomial(totals, 1, generator=generator))
            group = self.groups[chosen]
            indices = torch.multinomial(self.weights[chosen], batch, replacement=True, generator=generator)
        return Views(group.sample(indices, generator), [group.prompts[i] for i in indices], group.time_ids[indices])


@torch.no_grad()
def encode_views(vae, subsets: list[tuple[Subset, str | None]], *, center_crop: bool, random_flip: bool, seed: int,
                 device: torch.device, kind: str = "instance", caption_prefix: str | None = None,
                 bucket_options: dict | None = None, max_upscale: float = 1.0) -> ViewPool:
    """Encode the views of each (subset, folder) pair (`folder`: its class-image folder for kind `class`, else
    None for its instance folder)."""
    views = 1 if center_crop and not random_flip else 4
    found: dict[tuple[int, ...], tuple[list, list, list, list, list]] = {}
    upscaled: list[tuple[float, str]] = []
    for subset, folder in subsets:
        buckets = Buckets(subset.resolution, **(bucket_options or {})) if subset.bucket else None
        prompt = subset.instance_prompt if kind == "instance" else subset.class_prompt
        dataset = DreamBoothDataset(folder or subset.instance_data_dir, prompt, subset.resolution,
                                    center_crop=center_crop, random_flip=random_flip, seed=seed, kind=kind,
                                    caption_prefix=caption_prefix if kind == "instance" else None, buckets=buckets)
        if buckets is not None:
            for item in dataset.instance:
                factor = upscale_factor(item.image, buckets.assign(*item.image.size))
                if factor > max_upscale:
                    upscaled.append((factor, str(item.path)))
        for epoch in range(views):
            dataset.set_epoch(epoch)
            for index in range(len(dataset)):
                item = dataset[index]
                posterior = vae.encode(item["pixel_values"][None].to(device, vae.dtype)).latent_dist
                means, stds, prompts, weights, time_ids = found.setdefault(tuple(posterior.mean.shape),
                                                                           ([], [], [], [], []))
                means.append(posterior.mean.float())
                stds.append(posterior.std.float())
                prompts.append(item["prompt"])
                weights.append(float(subset.repeats))
                time_ids.append(item["time_ids"])
    if upscaled:
        factor, path = max(upscaled)
        print(f"note: {len(upscaled)} {kind} image(s) are upscaled more than {max_upscale:g}x to fit their bucket "
              f"(most: {factor:.2f}x, '{path}'); use larger images, or raise bucket_max_upscale to accept it",
              file=sys.stderr)
    groups, weights = [], []
    for shape in sorted(found):
        means, stds, prompts, w, time_ids = found[shape]
        groups.append(LatentCache(torch.cat(means), torch.cat(stds), prompts, torch.stack(time_ids)))
        weights.append(torch.tensor(w))
    return ViewPool(groups, weights)
