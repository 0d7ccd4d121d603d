"""Dual LoRA (Xu et al. 2025): W0 + u(t)·α/√(r1·r2)·ReLU(B·A) ⊙ Sign(D·C)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dreamlr.adapters.base import AdapterLayer
from dreamlr.adapters.config import (
    AdapterConfig,
    AdapterConfigError,
    check_choice,
    check_positive,
    check_rank,
    check_steps,
)

STE_MODES = ("clip", "identity")

# the fp32 number just above 1: hardtanh_backward passes the gradient on the open interval
# (−_ABOVE_ONE, _ABOVE_ONE), which is |x| ≤ 1 for fp32 x
_ABOVE_ONE = float(torch.nextafter(torch.tensor(1.0), torch.tensor(2.0)))


def _no_autocast(tensor: torch.Tensor):
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def _factor_products(mag_B, mag_A, dir_B, dir_A, coef):  # noqa: N803 (paper's names)
    """(relu(coef·B·A), D·C) in fp32; coef ≥ 0, so relu(coef·BA) = coef·relu(BA)."""
    return torch.mm(mag_B * coef, mag_A).clamp_min_(0), torch.mm(dir_B, dir_A)


class DualDelta(torch.autograd.Function):
    """ΔW = coef · ReLU(B·A) ⊙ Sign(D·C), Sign(x) = +1 where x > 0 else −1, with a straight-through
    gradient for Sign: `clip` passes it where |D·C| ≤ 1 (the gradient of clamp(x, −1, 1), the clipped
    STE of binarized networks), `identity` everywhere. With `base`, returns base + ΔW in the same buffer.

    Only the four factors are saved; B·A and D·C are recomputed in backward (r·out·in each), so the
    dense products cost no activation memory. Runs in fp32 with autocast off in both directions (the
    factors are fp32; under autocast the caller casts ΔW where it multiplies).
    """

    @staticmethod
    def forward(ctx, mag_B, mag_A, dir_B, dir_A, coef, clip: bool, base):  # noqa: N803 (paper's names)
        with _no_autocast(mag_B):
            magnitude, direction = _factor_products(mag_B, mag_A, dir_B, dir_A, coef)
            # sgn(D·C) − ½ is +½ where D·C > 0, −½ or −1.5 elsewhere: its sign is Sign(D·C)
            delta = magnitude.copysign_(direction.sgn_().sub_(0.5))
            if base is not None:
                delta = delta.add_(base)
        ctx.save_for_backward(mag_B, mag_A, dir_B, dir_A, coef)
        ctx.clip = clip
        return delta

    @staticmethod
    def backward(ctx, grad):
        mag_B, mag_A, dir_B, dir_A, coef = ctx.saved_tensors
        with _no_autocast(grad):
            grad = grad.to(torch.float32)
            magnitude, direction = _factor_products(mag_B, mag_A, dir_B, dir_A, coef)
            # three out×in buffers in all (fresh large buffers cost page faults on the CPU)
            grad_ba = magnitude.sgn()
            grad_dc = magnitude.mul_(grad)  # G ⊙ coef·relu(BA)
            if ctx.clip:  # in place: the open interval (−_ABOVE_ONE, _ABOVE_ONE) is |D·C| ≤ 1
                torch.ops.aten.hardtanh_backward.grad_input(grad_dc, direction, -_ABOVE_ONE, _ABOVE_ONE,
                                                            grad_input=grad_dc)
            # G ⊙ Sign(D·C) ⊙ [B·A > 0]: sgn(relu(coef·BA)), given the sign of sgn(D·C) − ½
            grad_ba.copysign_(direction.sgn_().sub_(0.5)).mul_(grad)
            return ((grad_ba @ mag_A.t()).mul_(coef), (mag_B * coef).t() @ grad_ba,
                    grad_dc @ dir_A.t(), dir_B.t() @ grad_dc, None, None, None)


class DualLinear(torch.autograd.Function):
    """y = x·(W0 + ΔW)ᵀ + b for a linear layer in fp32, ΔW as in `DualDelta`, with W0 and b frozen.

    One matmul forward. It saves x and ΔW where F.linear would save x and W0 + ΔW (the same
    memory), so backward reads Sign(D·C)·[B·A > 0] = sgn(ΔW) and coef·relu(B·A) = |ΔW| off ΔW
    instead of recomputing B·A, and forms W0 + ΔW again, in a buffer it has done with, for the
    input gradient. Backward: the weight gradient G = gᵀx (the one extra out×in matmul), then
    grad(B·A) = G ⊙ sgn(ΔW) and grad(D·C) = clip(G ⊙ sgn(ΔW)) ⊙ ΔW, four thin matmuls, and
    D·C recomputed only for the `clip` mask; three out×in buffers in all.
    """

    @staticmethod
    def forward(ctx, x, w0, bias, mag_B, mag_A, dir_B, dir_A, coef, clip: bool):  # noqa: N803 (paper's names)
        magnitude, direction = _factor_products(mag_B, mag_A, dir_B, dir_A, coef)
        if clip and direction.device.type == "cpu":  # (a host read costs nothing here) clip only if it clips
            low, high = torch.aminmax(direction)
            clip = bool(low < -1 or high > 1)
        delta = magnitude.copysign_(direction.sgn_().sub_(0.5))
        out = F.linear(x, torch.add(w0, delta, out=direction), bias)
        ctx.save_for_backward(x, w0, delta, mag_B, mag_A, dir_B, dir_A, coef)
        ctx.clip = clip
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, w0, delta, mag_B, mag_A, dir_B, dir_A, coef = ctx.saved_tensors
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = flat_grad.t() @ x.reshape(-1, x.shape[-1])  # G
        grad_ba = torch.sgn(delta).mul_(grad_w)
        if ctx.clip:  # clip(G ⊙ sgn ΔW) ⊙ ΔW = clip(G) ⊙ |ΔW|, in the recomputed D·C's buffer
            direction = torch.mm(dir_B, dir_A)
            torch.ops.aten.hardtanh_backward.grad_input(grad_ba, direction, -_ABOVE_ONE, _ABOVE_ONE,
                                                        grad_input=direction)
            grad_dc = direction.mul_(delta)
        else:
            grad_dc = torch.mul(grad_ba, delta, out=grad_w)
        grads = ((grad_ba @ mag_A.t()).mul_(coef), (mag_B * coef).t() @ grad_ba,
                 grad_dc @ dir_A.t(), dir_B.t() @ grad_dc)
        grad_x = None
        if ctx.needs_input_grad[0]:
            weight = torch.add(w0, delta, out=grad_w if ctx.clip else grad_ba)
            grad_x = (flat_grad @ weight).reshape(x.shape)
        return (grad_x, None, None, *grads, None, None)


class DualLoRALayer(AdapterLayer):
    """`dual_lora`: magnitude group mag_B (out, r1)·mag_A (r1, in), direction group dir_B (out, r2)·dir_A (r2, in).

    All four are Gaussian: the A factors with std 1/√in, the B factors with std `init_std`.
    u(t) = min(t / warmup_steps, 1), so ΔW = 0 at step 0. The only variant with a dense ΔW: in fp32
    (no autocast, no dropout in training, frozen base) the layer multiplies by W0 + ΔW once — a
    Linear through `DualLinear`, a Conv2d through `DualDelta` — otherwise the base layer runs as it
    is and ΔW (fp32, from `DualDelta`) on the adapter path.
    """

    name, order = "dual_lora", 4
    options = ("warmup_steps", "ste", "magnitude_rank", "direction_rank", "init_std")
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

    @classmethod
    def check_options(cls, config: AdapterConfig) -> None:
        check_steps(config, "warmup_steps")
        check_choice(config, "ste", STE_MODES)
        check_positive(config, "init_std")
        if config.variant != cls.name:
            return
        check_rank(config, "magnitude_rank")
        check_rank(config, "direction_rank")
        if (config.magnitude_rank is None) != (config.direction_rank is None):
            raise AdapterConfigError("dual_lora: give both magnitude_rank and direction_rank, or neither")
        if config.magnitude_rank is None and config.rank % 2:
            raise AdapterConfigError(
                f"dual_lora splits rank evenly between its magnitude and direction groups; rank {config.rank} "
                "is odd: use an even rank or set magnitude_rank and direction_rank"
            )

    @classmethod
    def ranks(cls, config: AdapterConfig) -> tuple[int, ...]:
        return config.sub_ranks

    @classmethod
    def rank_step(cls, config: AdapterConfig) -> int:
        """2 while the rank is split evenly (r1 = r2 = rank/2)."""
        return 2 if config.magnitude_rank is None else 1

    def warmup_factor(self) -> torch.Tensor:
        """u(t) at the current step."""
        return self.ramp(self.config.warmup_steps)

    def delta_weight(self, base: torch.Tensor | None = None) -> torch.Tensor:
        """ΔW (out, in*kh*kw) in fp32, differentiable; `base` + ΔW when given (an fp32 matrix)."""
        r1, r2 = self.config.sub_ranks
        coef = self.warmup_factor() * (self.config.alpha / math.sqrt(r1 * r2))
        clip = self.config.ste == "clip"
        return DualDelta.apply(self.mag_B, self.mag_A, self.dir_B, self.dir_A, coef, clip, base)

    def _adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._can_fuse(x):  # one matmul with W0 + ΔW instead of two
            if not self.is_conv:
                r1, r2 = self.config.sub_ranks
                coef = self.warmup_factor() * (self.config.alpha / math.sqrt(r1 * r2))
                return DualLinear.apply(x, self.w0, self.bias, self.mag_B, self.mag_A, self.dir_B, self.dir_A,
                                        coef, self.config.ste == "clip")
            return self.apply_dense(x, self.delta_weight(base=self.w0), self.bias)
        out = self.base_layer(x)
        return out.add_(self.apply_dense(self.adapter_input(x), self.delta_weight()).to(out.dtype))

    def merged_weight(self) -> torch.Tensor:
        return self.w0.float() + self.delta_weight()
