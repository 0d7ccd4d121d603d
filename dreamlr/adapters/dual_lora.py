"""Dual LoRA (Xu et al. 2025): W0 + u(t)·α/√(r1·r2)·ReLU(B·A) ⊙ Sign(D·C)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dreamlr.adapters.base import AdapterLayer
from dreamlr.adapters.config import AdapterConfig


class DualDelta(torch.autograd.Function):
    """ΔW = coef · ReLU(B·A) ⊙ Sign(D·C), Sign(x) = +1 where x > 0 else −1, with a straight-through
    gradient for Sign: `clip` passes it where |D·C| ≤ 1 (the gradient of clamp(x, −1, 1), the clipped
    STE of binarized networks), `identity` everywhere.

    Only the four factors are saved; B·A and D·C are recomputed in backward (r·out·in each), so the
    dense products cost no activation memory.
    """

    @staticmethod
    def forward(ctx, mag_B, mag_A, dir_B, dir_A, coef, clip: bool):  # noqa: N803 (paper's names)
        magnitude = (mag_B @ mag_A).clamp_min_(0)
        positive = (dir_B @ dir_A) > 0
        ctx.save_for_backward(mag_B, mag_A, dir_B, dir_A, coef)
        ctx.clip = clip
        return torch.where(positive, magnitude, -magnitude).mul_(coef)

    @staticmethod
    def backward(ctx, grad):
        mag_B, mag_A, dir_B, dir_A, coef = ctx.saved_tensors
        ba, dc = mag_B @ mag_A, dir_B @ dir_A
        scaled = grad * coef
        grad_ba = torch.where(dc > 0, scaled, -scaled).masked_fill_(ba <= 0, 0.0)
        grad_dc = scaled.mul_(ba.clamp_min_(0))
        if ctx.clip:
            grad_dc.masked_fill_(dc.abs() > 1, 0.0)
        return grad_ba @ mag_A.t(), mag_B.t() @ grad_ba, grad_dc @ dir_A.t(), dir_B.t() @ grad_dc, None, None


class DualLoRALayer(AdapterLayer):
    """`dual_lora`: magnitude group mag_B (out, r1)·mag_A (r1, in), direction group dir_B (out, r2)·dir_A (r2, in).

    All four are Gaussian: the A factors with std 1/√in, the B factors with std `init_std`.
    u(t) = min(t / warmup_steps, 1), so ΔW = 0 at step 0. The only variant with a dense ΔW.
    """

    tensor_names = ("mag_B", "mag_A", "dir_B", "dir_A")

    def _create_parameters(self, factory: dict) -> None:
        r1, r2 = self.config.sub_ranks
        std_a, std_b = 1.0 / math.sqrt(self.in_features), self.config.init_std
        self.mag_B = nn.Parameter(torch.randn(self.out_features, r1, **factory) * std_b)
        self.mag_A = nn.Parameter(torch.randn(r1, self.in_features, **factory) * std_a)
        self.dir_B = nn.Parameter(torch.randn(self.out_features, r2, **factory) * std_b)
        self.dir_A = nn.Parameter(torch.randn(r2, self.in_features, **factory) * std_a)

    @classmethod
    def param_count(cls, config: AdapterConfig, out_features: int, in_features: int) -> int:
        return sum(config.sub_ranks) * (in_features + out_features)

    def warmup_factor(self) -> torch.Tensor:
        """u(t) at the current step."""
        return self.ramp(self.config.warmup_steps)

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out, in*kh*kw) in fp32, differentiable."""
        r1, r2 = self.config.sub_ranks
        coef = self.warmup_factor() * (self.config.alpha / math.sqrt(r1 * r2))
        return DualDelta.apply(self.mag_B, self.mag_A, self.dir_B, self.dir_A, coef, self.config.ste == "clip")

    def _adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.delta_weight()
        if self._can_fuse(x):  # one matmul with W0 + ΔW instead of two
            return self.apply_dense(x, self.w0 + delta, self.bias)
        out = self.base_layer(x)
        return out.add_(self.apply_dense(self.adapter_input(x), delta).to(out.dtype))

    def _can_fuse(self, x: torch.Tensor) -> bool:
        """W0 + ΔW is exact enough only in fp32, and needs the same input on both paths (no dropout)."""
        no_dropout = isinstance(self.dropout, nn.Identity) or not self.training
        full_precision = x.dtype == self.w0.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type)
        return no_dropout and full_precision

    def merged_weight(self) -> torch.Tensor:
        return self.w0.float() + self.delta_weight()
