"""The keys both trainers share, with one name, one default and one validation each; old names kept as aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from dreamlr.errors import UserError
from dreamlr.optimizers import check_optimizer
from dreamlr.training.schedule import LR_SCHEDULERS

MIXED_PRECISION = ("no", "fp16", "bf16")
# old key -> its name now; the old names work until dreamlr 0.3 with a note on stderr
ALIASES = {"adam_weight_decay": "weight_decay", "batch_size": "train_batch_size"}


@dataclass
class TrainingKeys:
    """Optimizer, schedule, precision, accumulation, seed and checkpoint keys of `dreamlr train` and
    `dreamlr text train`. Each trainer adds its own keys, and its recipe's `learning_rate`, `lr_scheduler`,
    `train_batch_size`, `max_train_steps` and `checkpointing_steps`."""

    optimizer: str = "adamw"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    seed: int = 0
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None

    aliases: ClassVar[dict[str, str]] = ALIASES

    def check_training_keys(self) -> None:
        """Ranges of the shared keys (types are checked with the rest); UserError on the first problem."""
        for key in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise UserError(f"{key} must be in [0, 1), got {getattr(self, key)!r}")
        if self.adam_epsilon <= 0:
            raise UserError(f"adam_epsilon must be positive, got {self.adam_epsilon!r}")
        for key in ("weight_decay", "lr_warmup_steps", "max_grad_norm"):
            if getattr(self, key) < 0:
                raise UserError(f"{key} must be 0 or more, got {getattr(self, key)!r}"
                                + (" (0 turns clipping off)" if key == "max_grad_norm" else ""))
        for key in ("gradient_accumulation_steps", "train_batch_size", "checkpointing_steps"):
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise UserError(f"checkpoints_total_limit must be at least 1 or null, got {self.checkpoints_total_limit}")
        if self.learning_rate <= 0:
            raise UserError("learning rates must be positive")
        check_optimizer(self.optimizer)
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise UserError(f"unknown lr_scheduler {self.lr_scheduler!r}; choose one of {', '.join(LR_SCHEDULERS)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UserError(f"unknown mixed_precision {self.mixed_precision!r}; choose one of "
                            f"{', '.join(MIXED_PRECISION)}")

    def check_device(self) -> None:
        """At train time (a config file validates anywhere): fp16 needs CUDA."""
        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise UserError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on the CPU")

