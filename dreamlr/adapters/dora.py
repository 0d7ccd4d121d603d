"""DoRA (Liu et al. 2024): m ⊙ (W0 + s·B·A) / ‖W0 + s·B·A‖_row, the norm detached from the graph."""

from __future__ import annotations

import torch
from torch import nn

from dreamlr.adapters.base import LoRAForm, row_norm_sq, row_sq
from dreamlr.adapters.config import AdapterConfig
from dreamlr.adapters.lora import LoRALayer

_TINY = 1e-12


class DoRALayer(LoRALayer):
    """`dora`: LoRA's A and B plus a magnitude m (out,) initialised to ‖W0‖_row.

    The row norms come from ‖W0‖², W0·Aᵀ and A·Aᵀ (B·A is never formed), from the base weight as
    it is at each forward. The output is r ⊙ (W0x + s·BAx) + b with r = m / ‖W0 + s·BA‖_row, computed
    from the frozen layer's own output, so it is bit-identical to it while r = 1 (at attach).
    With `lora_dropout` in training, as PEFT and the DoRA authors' code: the dropped input x̃ also
    takes the (r − 1)·W0 term, W0x + b + (r − 1) ⊙ W0x̃ + r ⊙ s·BAx̃, a second base matmul; in
    eval (or without dropout) the base matmul runs once.
    """

    name, order = "dora", 2
    tensor_names = ("lora_A", "lora_B", "magnitude")

    def _create_parameters(self, factory: dict) -> None:
        super()._create_parameters(factory)
        self.magnitude = nn.Parameter(row_sq(self.w0).sqrt())

    @classmethod
    def param_count(cls, config: AdapterConfig, out_features: int, in_features: int) -> int:
        return config.rank * (in_features + out_features) + out_features

    def _norm_ratio(self) -> torch.Tensor:
        """m / ‖W0 + s·B·A‖_row, with gradient to m only."""
        with torch.no_grad():
            norm = row_norm_sq(self.w0, self.scale * self.lora_B, self.lora_A)[1].sqrt()
        return self.magnitude / norm.clamp_min(_TINY)

    def _adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)  # W0x + b
        ratio = self._norm_ratio()
        if self.training and not isinstance(self.dropout, nn.Identity):
            dropped = self.dropout(x)
            h = self.apply_dense(dropped.to(torch.float32), self.lora_A)
            low_rank = self.apply_up(h, self.lora_B).to(out.dtype)
            r = self.channel_view(ratio).to(out.dtype)
            return torch.addcmul(out, self.apply_dense(dropped, self.w0), r - 1).addcmul_(low_rank, r * self.scale)
        # r ⊙ (W0x + b) + (1 − r) ⊙ b + (r·s) ⊙ BAx: exactly the frozen layer's output while r = 1 and
        # B = 0; out of place first (the frozen output may be a view), then in place on that
        r = self.channel_view(ratio).to(out.dtype)
        if self.bias is None:
            out = out * r
        else:
            out = torch.addcmul(self.channel_view(self.bias.float() * (1.0 - ratio)).to(out.dtype), out, r)
        h = self.apply_dense(x.to(torch.float32), self.lora_A)
        return self.add_up(out, h, self.lora_B * ratio[:, None], self.scale)

    def merged_weight(self) -> torch.Tensor:
        adapted = self.w0.float() + self.scale * (self.lora_B @ self.lora_A)
        norm = adapted.norm(dim=1, keepdim=True).detach()
        return self.magnitude[:, None] / norm.clamp_min(_TINY) * adapted

    def lora_factors(self) -> LoRAForm:
        """PEFT's DoRA form (formats without DoRA take the SVD of W' − W0 instead)."""
        return LoRAForm(self.lora_A, self.lora_B, float(self.config.alpha), self.magnitude)
