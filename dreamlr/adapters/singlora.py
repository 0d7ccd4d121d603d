"""SingLoRA (Bensaïd et al. 2025): W0 + s·u(t)·A[:out]·A[:in]ᵀ with one matrix A (max(out, in), r)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dreamlr.adapters.base import AdapterLayer, LoRAForm
from dreamlr.adapters.config import AdapterConfig, check_steps


class SingLoRALayer(AdapterLayer):
    """`singlora`: a single Kaiming-uniform A; u(t) = min(t / ramp_steps, 1) makes u(0) = 0 the identity.

    For a non-square layer the update is A[:out]·A[:in]ᵀ (the first `out` and first `in` rows).
    """

    name, order, options = "singlora", 3, ("ramp_steps",)
    tensor_names = ("lora_A",)

    def _create_parameters(self, factory: dict) -> None:
        rows = max(self.out_features, self.in_features)
        self.lora_A = nn.Parameter(torch.empty(rows, self.config.rank, **factory))
        # Kaiming-uniform (a=√5) for the layer's fan-in, as LoRA's A: A (rows, r) would otherwise take
        # fan-in r, and A·Aᵀ would start as large as W0 itself
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.lora_A, -bound, bound)

    @classmethod
    def param_count(cls, config: AdapterConfig, out_features: int, in_features: int) -> int:
        return config.rank * max(out_features, in_features)

    @classmethod
    def check_options(cls, config: AdapterConfig) -> None:
        check_steps(config, "ramp_steps")

    def ramp_factor(self) -> torch.Tensor:
        """u(t) at the current step."""
        return self.ramp(self.config.ramp_steps)

    def _adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        down = self.lora_A[: self.in_features].t()
        h = self.apply_dense(self.adapter_input(x), down)
        h = h * self.ramp_factor()
        return self.add_up(out, h, self.lora_A[: self.out_features], self.scale)

    def merged_weight(self) -> torch.Tensor:
        delta = self.lora_A[: self.out_features] @ self.lora_A[: self.in_features].t()
        return self.w0.float() + (self.scale * self.ramp_factor()) * delta

    def lora_factors(self) -> LoRAForm:
        """up = u(t)·A[:out], down = A[:in]ᵀ, at the same α and r."""
        return LoRAForm(self.lora_A[: self.in_features].t(), self.lora_A[: self.out_features] * self.ramp_factor(),
                        float(self.config.alpha))
