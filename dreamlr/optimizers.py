"""The optimizers a run may choose (`optimizer`): AdamW (default), and for memory or tuning-free training
8-bit AdamW (bitsandbytes), Adafactor (transformers) and Prodigy (prodigyopt), each an optional package
checked before any work. Every one takes dreamlr's parameter groups, each group with its own learning rate
(LoRA+ ratios, head and text-encoder rates) and weight decay (0 for DoRA's magnitude)."""

from __future__ import annotations

import importlib.util

import torch

from dreamlr.errors import UserError

OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "prodigy")
# optimizer -> (module it needs, pip extra)
_PACKAGES = {"adamw8bit": ("bitsandbytes", "bnb"), "adafactor": ("transformers", None),
             "prodigy": ("prodigyopt", "prodigy")}


def check_optimizer(name: str) -> None:
    """A UserError when `name` is unknown or its package is not installed."""
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
    module, extra = _PACKAGES.get(name, (None, None))
    if module and importlib.util.find_spec(module) is None:
        raise UserError(f"optimizer {name} needs the {module} package: pip install 'dreamlr[{extra}]' "
                        "(or use optimizer: adamw)")


def build_optimizer(groups: list[dict], *, name: str = "adamw", beta1: float = 0.9, beta2: float = 0.999,
                    weight_decay: float = 1e-2, epsilon: float = 1e-8) -> torch.optim.Optimizer:
    """The optimizer `name` over parameter groups that each carry their own learning rate.

    `weight_decay` applies to every group that does not set its own (`parameter_groups` sets 0 only for
    DoRA's magnitude), adapter tensors included. Adafactor keeps its own epsilons and runs with the given
    learning rates (no relative step); Prodigy estimates the step size, so its learning rate is a
    multiplier (1.0 is the usual choice)."""
    check_optimizer(name)
    for group in groups:
        group.setdefault("weight_decay", weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, betas=(beta1, beta2), eps=epsilon, weight_decay=weight_decay)
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, betas=(beta1, beta2), eps=epsilon, weight_decay=weight_decay)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(groups, lr=groups[0]["lr"], scale_parameter=False, relative_step=False, warmup_init=False,
                         weight_decay=weight_decay)
    from prodigyopt import Prodigy

    return Prodigy(groups, betas=(beta1, beta2), eps=epsilon, weight_decay=weight_decay)
