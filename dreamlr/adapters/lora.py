"""LoRA (Hu et al. 2021) and LoRA+ (Hayou et al. 2024): W0 + s·B·A, B = 0 at start."""

from __future__ import annotations

import math

import torch
from torch import nn

from dreamlr.adapters.base import AdapterLayer, LoRAForm
from dreamlr.adapters.config import AdapterConfig, check_positive


class LoRALayer(AdapterLayer):
    """`lora`: A (r, in) Kaiming-uniform(a=√5), B (out, r) zero; forward x → A → B, scaled by α/r."""

    name, order = "lora", 0
    tensor_names = ("lora_A", "lora_B")

    def _create_parameters(self, factory: dict) -> None:
        r = self.config.rank
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @classmethod
    def param_count(cls, config: AdapterConfig, out_features: int, in_features: int) -> int:
        return config.rank * (in_features + out_features)

    def _adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        h = self.apply_dense(self.adapter_input(x), self.lora_A)
        return self.add_up(out, h, self.lora_B, self.scale)

    def merged_weight(self) -> torch.Tensor:
        return self.w0.float() + self.scale * (self.lora_B @ self.lora_A)

    def lora_factors(self) -> LoRAForm:
        return LoRAForm(self.lora_A, self.lora_B, float(self.config.alpha))


class LoRAPlusLayer(LoRALayer):
    """`loraplus`: LoRA whose B is trained at `lr_ratio` times the learning rate of A."""

    name, order, options = "loraplus", 1, ("lr_ratio",)

    @classmethod
    def check_options(cls, config: AdapterConfig) -> None:
        check_positive(config, "lr_ratio")

    def lr_multipliers(self) -> dict[str, float]:
        return {"lora_B": self.config.lr_ratio}
