"""Optimizer groups, the learning-rate schedule, and the random stream of each micro-batch."""

from __future__ import annotations

import torch
from torch import nn

from dreamlr.adapters import parameter_groups

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


def adapter_groups(parts: dict[str, tuple[nn.Module, float]], weight_decay: float | None = None) -> list[dict]:
    """Optimizer groups for several adapted models, each at its own learning rate (LoRA+ ratios included);
    `weight_decay` None leaves it to `build_optimizer`."""
    groups = []
    for model, lr in parts.values():
        groups.extend(parameter_groups(model, lr, weight_decay))
    return groups


def build_lr_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int):
    """One of LR_SCHEDULERS, stepped once per optimizer step."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def step_generator(seed: int, step: int, micro_step: int = 0) -> torch.Generator:
    """The random stream of one micro-batch, a function of (seed, step) only: resuming replays it exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + micro_step) % (2**63 - 1))
