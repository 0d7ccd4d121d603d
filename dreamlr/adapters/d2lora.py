"""D2-LoRA (Fujisawa & Kondo 2026): ΔW = s·(B₊A₊ − τ·B₋A₋), W' = P(W0 + ΔW) + ΔW."""

from __future__ import annotations

import math

import torch
from torch import nn

from dreamlr.adapters.base import AdapterLayer, row_norm_sq, row_sq
from dreamlr.adapters.config import AdapterConfig, check_choice, check_flag, check_non_negative

_TINY = 1e-12
PROJECTIONS = ("row", "none")


class D2LoRALayer(AdapterLayer):
    """`d2lora`: a positive and a negative low-rank branch, each of rank r.

    P rescales each row of W0 + ΔW to ‖W0‖_row (the scale factor detached); with
    `residual_after_projection` ΔW is added again after P; `projection: none` gives W0 + ΔW.
    B₊ = B₋ = 0 at start; A₊ is Kaiming-uniform and A₋ a separate Gaussian draw of the same std.
    Row norms come from ‖W0‖², W0·Aᵀ and A·Aᵀ without forming ΔW, from the base weight as it is at
    each forward; the output is computed from the frozen layer's own output, so it is bit-identical
    to it while ΔW = 0.
    """

    name, order, options = "d2lora", 5, ("tau", "projection", "residual_after_projection")
    tensor_names = ("pos_B", "pos_A", "neg_B", "neg_A")

    def _create_parameters(self, factory: dict) -> None:
        r, fan_in = self.config.rank, self.in_features
        self.pos_A = nn.Parameter(torch.empty(r, fan_in, **factory))
        nn.init.kaiming_uniform_(self.pos_A, a=math.sqrt(5))
        self.neg_A = nn.Parameter(torch.randn(r, fan_in, **factory) / math.sqrt(3 * fan_in))
        self.pos_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        self.neg_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))

    @classmethod
    def param_count(cls, config: AdapterConfig, out_features: int, in_features: int) -> int:
        return 2 * config.rank * (in_features + out_features)

    @classmethod
    def check_options(cls, config: AdapterConfig) -> None:
        check_non_negative(config, "tau")
        check_choice(config, "projection", PROJECTIONS)
        check_flag(config, "residual_after_projection")

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(up, down) with ΔW = up·down: up = s·[B₊, −τ·B₋] (out, 2r), down = [A₊; A₋] (2r, in)."""
        up = torch.cat([self.pos_B, -self.config.tau * self.neg_B], dim=1) * self.scale
        down = torch.cat([self.pos_A, self.neg_A], dim=0)
        return up, down

    def projection_ratio(self, up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        """‖W0‖_row / ‖W0 + ΔW‖_row, detached."""
        with torch.no_grad():
            w0_sq, norm_sq = row_norm_sq(self.w0, up, down)
            return (w0_sq / norm_sq.clamp_min(_TINY)).sqrt()

    def _adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        up, down = self.factors()
        h = self.apply_dense(self.adapter_input(x), down)
        if self.config.projection == "none":
            return self.add_up(self.base_layer(x), h, up, 1.0)
        # c ⊙ (W0x + ΔWx) [+ ΔWx] + b  =  c ⊙ (W0x + b) + (1 − c) ⊙ b + k ⊙ ΔWx, with k = c (+ 1); c is a
        # constant, and the frozen layer's own output W0x + b passes through exactly while c = 1, ΔW = 0
        ratio = self.projection_ratio(up, down)
        k = ratio + 1.0 if self.config.residual_after_projection else ratio
        out = self.base_layer(x)
        c = self.channel_view(ratio).to(out.dtype)
        if self.bias is None:
            out = out.mul_(c)
        else:  # out of place: with a bias the frozen output may be a view, costly to change in place
            out = torch.addcmul(self.channel_view(self.bias.float() * (1.0 - ratio)).to(out.dtype), out, c)
        return self.add_up(out, h, up * k[:, None], 1.0)

    def merged_weight(self) -> torch.Tensor:
        up, down = self.factors()
        delta = up @ down
        adapted = self.w0.float() + delta
        if self.config.projection == "none":
            return adapted
        norm = adapted.norm(dim=1, keepdim=True).detach().clamp_min(_TINY)
        projected = adapted * (row_sq(self.w0).sqrt()[:, None] / norm)
        return projected + delta if self.config.residual_after_projection else projected
