"""DoRA (Liu et al. 2024): m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖_row, the norm detached from the graph."""

from __future__ import annotations

import torch
from torch import nn

from dreamlr.adapters.base import row_norm_sq
from dreamlr.adapters.config import AdapterConfig
from dreamlr.adapters.lora import LoRALayer

_TINY = 1e-12


class DoRALayer(LoRALayer):
    """`dora`: LoRA's A and B plus a magnitude m (out,) initialised to ‖W0‖_row.

    The row norms come from ‖W0‖², W0·Aᵀ and A·Aᵀ, so B·A is never formed; the base matmul
    runs once (dropout applies to the low-rank path only).
    """

    tensor_names = ("lora_A", "lora_B", "magnitude")

    def _create_parameters(self, factory: dict) -> None:
        super()._create_parameters(factory)
        w0_sq = self.w0.float().pow(2).sum(dim=1)
        self.register_buffer("w0_norm_sq", w0_sq, persistent=False)
        self.magnitude = nn.Parameter(w0_sq.sqrt())

    @classmethod
    def param_count(cls, config: AdapterConfig, out_features: int, in_features: int) -> int:
        return config.rank * (in_features + out_features) + out_features

    def _norm_ratio(self) -> torch.Tensor:
        """m / ‖W0 + s·B·A‖_row, with gradient to m only."""
        with torch.no_grad():
            norm = row_norm_sq(self.w0_norm_sq, self.w0, self.scale * self.lora_B, self.lora_A).sqrt()
        return self.magnitude / norm.clamp_min(_TINY)

    def _adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.apply_dense(x, self.w0)
        h = self.apply_dense(self.adapter_input(x), self.lora_A)
        out = self.add_up(out, h, self.lora_B, self.scale)
        ratio = self.channel_view(self._norm_ratio()).to(out.dtype)
        if self.bias is None:
            return out * ratio
        return torch.addcmul(self.channel_view(self.bias), out, ratio)

    def merged_weight(self) -> torch.Tensor:
        adapted = self.w0.float() + self.scale * (self.lora_B @ self.lora_A)
        norm = adapted.norm(dim=1, keepdim=True).detach()
        return self.magnitude[:, None] / norm.clamp_min(_TINY) * adapted
