"""Parameter-matched comparisons: trainable-parameter counts of a run's adapters without training, and the
rank that brings a variant closest to a target count."""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn

from dreamlr.adapters import attach, count_parameters
from dreamlr.diffusion.config import DreamBoothConfig
from dreamlr.diffusion.models import load_components
from dreamlr.errors import UserError


class ParameterCounter:
    """Counts a DreamBooth config's trainable adapter parameters by attaching its adapters to a copy of the
    model on the meta device (the model is loaded once, then holds no memory)."""

    def __init__(self, model_source: str) -> None:
        parts = load_components(model_source)
        self.unet = parts.unet.to("meta")
        self.text_encoders = {name: encoder.to("meta") for name, encoder in parts.text_encoders().items()}

    def count(self, config: DreamBoothConfig) -> int:
        """Trainable parameters `dreamlr.diffusion.train.train(config)` would create."""
        total = 0
        parts = [(self.unet, config.unet_adapter_config())]
        if config.train_text_encoder:
            parts += [(encoder, config.text_encoder_adapter_config(name)) for name, encoder in self.text_encoders.items()]
        for model, adapter in parts:
            skeleton: nn.Module = copy.deepcopy(model)
            attach(skeleton, adapter)
            total += count_parameters(skeleton)
        return total


def match_rank(count_at: Callable[[int], int], target: int, step: int = 1) -> tuple[int, int]:
    """(rank, count) with the count closest to `target` (the smaller rank on a tie), among multiples of `step`.

    `count_at(rank)` is affine in the rank for every variant, so two probes locate the answer and its
    neighbours are checked exactly; a rank some layer cannot take (count_at raises a UserError) is skipped.
    """
    low, high = count_at(step), count_at(2 * step)
    slope = (high - low) / step
    if slope <= 0:
        raise UserError("the adapter's rank does not change its parameter count (are magnitude_rank and "
                        "direction_rank set?), so --match params cannot match it")
    guess = max(step, int((step + (target - low) / slope) // step) * step)
    counts = {}
    for rank in range(max(step, guess - step), guess + 3 * step, step):
        try:
            counts[rank] = count_at(rank)
        except UserError:
            pass
    if not counts:  # the ideal rank is more than some layer allows: take the largest one that fits
        rank = _largest_fitting(count_at, step, guess // step)
        counts[rank] = count_at(rank)
    rank = min(counts, key=lambda r: (abs(counts[r] - target), r))
    return rank, counts[rank]


def _largest_fitting(count_at: Callable[[int], int], step: int, above: int) -> int:
    """The largest rank k*step (1 <= k < above) count_at accepts, by bisection (2*step is known to fit)."""
    fits, fails = 2, above
    while fails - fits > 1:
        middle = (fits + fails) // 2
        try:
            count_at(middle * step)
            fits = middle
        except UserError:
            fails = middle
    return fits * step
