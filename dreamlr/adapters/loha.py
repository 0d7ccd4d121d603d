"""LoHa (Hyeon-Woo et al. 2022, "FedPara"; as LyCORIS has it): ΔW = s·(W1a·W1b) ⊙ (W2a·W2b), s = α/r."""

from __future__ import annotations

import torch
from torch import nn

from dreamlr.adapters.base import AdapterLayer
from dreamlr.adapters.config import AdapterConfig


class HadamardDelta(torch.autograd.Function):
    """s·(w1a·w1b) ⊙ (w2a·w2b) in fp32 with autocast off, saving only the four factors: backward forms the two
    products again (LyCORIS' HadaWeight does the same), so they cost no activation memory."""

    @staticmethod
    def forward(ctx, w1a, w1b, w2a, w2b, scale: float):
        with torch.autocast(device_type=w1a.device.type, enabled=False):
            delta = torch.mm(w1a, w1b).mul_(torch.mm(w2a, w2b)).mul_(scale)
        ctx.save_for_backward(w1a, w1b, w2a, w2b)
        ctx.scale = scale
        return delta

    @staticmethod
    def backward(ctx, grad):
        w1a, w1b, w2a, w2b = ctx.saved_tensors
        with torch.autocast(device_type=grad.device.type, enabled=False):
            grad = grad.to(torch.float32) * ctx.scale
            grad_1 = torch.mm(w2a, w2b).mul_(grad)  # ∂/∂(w1a·w1b)
            grad_2 = torch.mm(w1a, w1b).mul_(grad)  # ∂/∂(w2a·w2b)
            return grad_1 @ w1b.t(), w1a.t() @ grad_1, grad_2 @ w2b.t(), w2a.t() @ grad_2, None


class LoHaLayer(AdapterLayer):
    """`loha`: two rank-r products multiplied element-wise, hada_w1_a/hada_w2_a (out, r) and hada_w1_b/hada_w2_b
    (r, in·kh·kw), named and shaped as LyCORIS' LoHa (the plain form; no Tucker core on convs).

    LyCORIS' init: w1a ~ N(0, 0.1²), w1b and w2b ~ N(0, 1), w2a = 0, so ΔW = 0 at attach. ΔW is no low-rank
    product (its rank reaches r²), so the forward forms it: in fp32 (no autocast, no dropout in training,
    frozen base) x goes through W0 + ΔW in one matmul, as Dual LoRA's; otherwise W0x + b comes from the
    frozen layer and ΔW is applied to the (dropped-out) input.
    """

    name, order = "loha", 6
    tensor_names = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")

    def _create_parameters(self, factory: dict) -> None:
        r, out_f, in_f = self.config.rank, self.out_features, self.in_features
        self.hada_w1_a = nn.Parameter(torch.randn(out_f, r, **factory) * 0.1)
        self.hada_w1_b = nn.Parameter(torch.randn(r, in_f, **factory))
        self.hada_w2_a = nn.Parameter(torch.zeros(out_f, r, **factory))
        self.hada_w2_b = nn.Parameter(torch.randn(r, in_f, **factory))

    @classmethod
    def param_count(cls, config: AdapterConfig, out_features: int, in_features: int) -> int:
        return 2 * config.rank * (in_features + out_features)

    def delta_weight(self) -> torch.Tensor:
        """ΔW (out, in·kh·kw) in fp32, differentiable."""
        return HadamardDelta.apply(self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b, self.scale)

    def _adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._can_fuse(x):
            return self.apply_dense(x, self.w0 + self.delta_weight(), self.bias)
        out = self.base_layer(x)
        return out.add_(self.apply_dense(self.adapter_input(x), self.delta_weight()).to(out.dtype))

    def merged_weight(self) -> torch.Tensor:
        return self.w0.float() + self.delta_weight()
