"""Any adapter layer as LoRA factors: exactly where the variant allows, else a truncated SVD of its delta."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dreamlr.adapters import AdapterLayer
from dreamlr.export.svd import relative_error, truncated_svd

# an SVD export's default budget: per layer, keep this share of ‖W' − W0‖²_F (relative error ≤ √(1 − 0.99))
DEFAULT_ENERGY = 0.99
SVD_ALPHA = 1.0  # the alpha of SVD-exported layers


@dataclass
class LoRAFactors:
    """One layer as a LoRA: ΔW = (alpha / rank)·up·down, or PEFT's DoRA form when `magnitude` is set.

    Matrices are 2-D fp32 on the CPU; `kernel` is a Conv2d's (in, kh, kw), empty for a linear layer.
    """

    down: torch.Tensor  # (r, in·kh·kw)
    up: torch.Tensor  # (out, r)
    alpha: float
    kernel: tuple[int, ...] = ()
    magnitude: torch.Tensor | None = None  # (out,)
    fan_in_fan_out: bool = False  # the base stores W as (in, out) (transformers' Conv1D)
    error: float | None = None  # relative Frobenius error of a truncated SVD; None when exact

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def down_weight(self) -> torch.Tensor:
        """The down factor as the layer's weight: (r, in) or a conv kernel (r, in, kh, kw)."""
        return self.down.reshape(self.rank, *self.kernel) if self.kernel else self.down

    @property
    def up_weight(self) -> torch.Tensor:
        """The up factor as the layer's weight: (out, r) or a 1×1 conv kernel (out, r, 1, 1)."""
        return self.up[:, :, None, None] if self.kernel else self.up

    @property
    def magnitude_weight(self) -> torch.Tensor | None:
        """The DoRA magnitude as PEFT stores it: (out,), or (1, out, 1, 1) for a conv."""
        if self.magnitude is None:
            return None
        return self.magnitude.reshape(1, -1, 1, 1) if self.kernel else self.magnitude

    @classmethod
    def from_weights(cls, down: torch.Tensor, up: torch.Tensor, alpha: float,
                     magnitude: torch.Tensor | None = None) -> LoRAFactors:
        """From tensors as LoRA files store them (conv kernels 4-D, a conv magnitude (1, out, 1, 1))."""
        flat = down.reshape(down.shape[0], -1).float()
        return cls(down=flat, up=up.reshape(up.shape[0], -1).float(), alpha=float(alpha),
                   kernel=tuple(down.shape[1:]) if down.dim() == 4 else (),
                   magnitude=None if magnitude is None else magnitude.reshape(-1).float())


@torch.no_grad()
def layer_factors(layer: AdapterLayer, rank: int | None = None, energy: float | None = None,
                  dora: bool = True) -> LoRAFactors:
    """`layer` as LoRA factors.

    Exact when neither `rank` nor `energy` is given and the variant has `lora_factors` (with a DoRA
    magnitude only where the format has DoRA: `dora`); otherwise the truncated SVD of W' − W0 (alpha
    `SVD_ALPHA`, the factors scaled to match) at `rank`, at the smallest rank keeping `energy` of
    ‖W' − W0‖²_F, or by default at the smallest rank keeping `DEFAULT_ENERGY` of it but at least
    `matched_rank(layer)`. `error` is the exact ‖ΔW − ΔW_r‖_F / ‖ΔW‖_F.
    """
    kernel = tuple(layer.base_layer.weight.shape[1:]) if layer.is_conv else ()
    exact = layer.lora_factors() if rank is None and energy is None else None
    if exact is not None and (exact.magnitude is None or dora):
        return LoRAFactors(down=_cpu(exact.down), up=_cpu(exact.up), alpha=exact.alpha, kernel=kernel,
                           magnitude=None if exact.magnitude is None else _cpu(exact.magnitude),
                           fan_in_fan_out=layer.transposed)
    floor = 1
    if rank is None and energy is None:
        energy, floor = DEFAULT_ENERGY, matched_rank(layer)
    delta = _cpu(layer.merged_weight() - layer.w0.float())
    up, down = truncated_svd(delta, rank=rank, energy=energy, min_rank=floor)
    error = relative_error(delta, up @ down)
    # alpha 1 on every layer whatever its rank (sd-scripts' default network_alpha), √r in each factor: readers that
    # take one alpha for a whole file (diffusers' kohya converter) then scale every layer right
    root = math.sqrt(down.shape[0])
    return LoRAFactors(down=down * root, up=up * root, alpha=SVD_ALPHA, kernel=kernel,
                       fan_in_fan_out=layer.transposed, error=error)


def matched_rank(layer: AdapterLayer) -> int:
    """The rank of a LoRA with as many parameters as the layer's adapter (its variant's `matched_rank`)."""
    return type(layer).matched_rank(layer.config, layer.out_features, layer.in_features)


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float32).contiguous()
