"""An exponential moving average of an adapter's trainable tensors, kept in fp32 beside the live ones,
with diffusers' `EMAModel` decay schedule (no warm-up power form): the t-th update (t = 0, 1, …) uses
decay 0 at t = 0 (the average starts as a copy) and then min(`decay`, (1 + t) / (10 + t))."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

UPDATES_KEY = "ema.updates"


class AdapterEMA:
    """The moving average of every trainable parameter of `model` (the attached adapters)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().float().clone() for name, p in self.params.items()}
        self.updates = 0

    def current_decay(self) -> float:
        """The decay the next update uses."""
        t = self.updates
        return 0.0 if t == 0 else min(self.decay, (1 + t) / (10 + t))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the live tensors in (call after each optimizer step)."""
        decay = self.current_decay()
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), 1 - decay)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averages and the update count, as tensors (for a safetensors checkpoint)."""
        return {**{name: t.contiguous() for name, t in self.shadow.items()},
                UPDATES_KEY: torch.tensor(self.updates, dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` gave; the tensor names must be this model's."""
        names = set(state) - {UPDATES_KEY}
        if names != set(self.shadow) or UPDATES_KEY not in state:
            raise ValueError("EMA state does not match this model's adapter tensors")
        for name in self.shadow:
            self.shadow[name] = state[name].float().clone()
        self.updates = int(state[UPDATES_KEY])

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the model holds the averages (e.g. to save them); the live tensors come back after."""
        live = {name: p.detach().clone() for name, p in self.params.items()}
        try:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(self.shadow[name].to(param.dtype))
            yield
        finally:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(live[name])
