"""AdapterLayer: wraps one frozen nn.Linear or nn.Conv2d and holds the state every variant shares."""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from dreamlr.adapters.config import AdapterConfig, AdapterConfigError


class LoRAForm(NamedTuple):
    """A layer's update as a LoRA: ΔW = (alpha / rank)·up·down, or PEFT's DoRA form where `magnitude` is set."""

    down: torch.Tensor  # (r, in*kh*kw)
    up: torch.Tensor  # (out, r)
    alpha: float
    magnitude: torch.Tensor | None = None  # (out,)


class AdapterLayer(nn.Module):
    """Base of every variant: geometry of the wrapped layer, step buffer, merge / unmerge.

    A Conv2d kernel (out, in, kh, kw) is seen as the matrix (out, in*kh*kw) wherever a dense
    weight is needed; its low-rank "down" factor is a conv with the base's kernel size, stride,
    padding and dilation, and its "up" factor a 1x1 conv.

    A variant is a subclass that sets `name` in a module of dreamlr/adapters/ (the registry finds it
    there): it defines `tensor_names`, `param_count`, `_create_parameters`, `_adapted_forward` and
    `merged_weight`, and where it differs from the defaults here `order`, `options`, `check_options`,
    `ranks`, `rank_step`, `matched_rank`, `lora_factors` and `lr_multipliers`.
    """

    name: ClassVar[str] = ""  # the variant (`variant:` in a config); empty on classes that are none
    order: ClassVar[int] = 0  # place in VARIANTS, the CLI's lists and compare's default (lora, its reference, first)
    options: ClassVar[tuple[str, ...]] = ()  # the AdapterConfig fields it reads beyond rank, alpha, targets, dropout
    tensor_names: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, name: str = "") -> None:
        super().__init__()
        if not is_adaptable(base_layer):
            raise AdapterConfigError(
                f"module {name!r} is a {type(base_layer).__name__}; adapters wrap nn.Linear, nn.Conv2d "
                "and transformers' Conv1D"
            )
        if isinstance(base_layer, nn.Conv2d) and base_layer.groups != 1:
            raise AdapterConfigError(
                f"module {name!r} is a grouped Conv2d (groups={base_layer.groups}); adapters support groups=1 only"
            )
        self.base_layer = base_layer
        self.config = config
        self.is_conv = isinstance(base_layer, nn.Conv2d)
        self.transposed = is_transformers_conv1d(base_layer)  # GPT-2's Conv1D stores W as (in, out)
        weight = base_layer.weight
        self.out_features = weight.shape[1] if self.transposed else weight.shape[0]
        self.in_features = weight.shape[0] if self.transposed else math.prod(weight.shape[1:])
        self.scale = config.scale
        self.dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.register_buffer("step", torch.zeros((), dtype=torch.long, device=weight.device), persistent=False)
        self._w0: torch.Tensor | None = None  # the original weight while merged
        self._check_rank(name)
        for param in base_layer.parameters():
            param.requires_grad_(False)
        factory = {"device": weight.device, "dtype": torch.float32}
        with torch.no_grad():
            self._create_parameters(factory)

    # -- what a variant defines ------------------------------------------------------------
    def _create_parameters(self, factory: dict) -> None:
        raise NotImplementedError

    def _adapted_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def merged_weight(self) -> torch.Tensor:
        """W' as an fp32 matrix (out, in*kh*kw)."""
        raise NotImplementedError

    @classmethod
    def param_count(cls, config: AdapterConfig, out_features: int, in_features: int) -> int:
        """Trainable parameters of one wrapped layer (DESIGN §2)."""
        raise NotImplementedError

    @classmethod
    def check_options(cls, config: AdapterConfig) -> None:
        """Raise AdapterConfigError on a bad value of one of `options` (run for every config, whatever its
        variant); rules that hold only for this variant check `config.variant == cls.name`."""

    @classmethod
    def ranks(cls, config: AdapterConfig) -> tuple[int, ...]:
        """The ranks of its factors, each at most `max_rank()` of a layer it wraps."""
        return (config.rank,)

    @classmethod
    def rank_step(cls, config: AdapterConfig) -> int:
        """The ranks a parameter-matched comparison may give it are multiples of this."""
        return 1

    @classmethod
    def matched_rank(cls, config: AdapterConfig, out_features: int, in_features: int) -> int:
        """The rank of a LoRA with as many parameters as this adapter on an (out, in) layer, at least 1."""
        return max(1, cls.param_count(config, out_features, in_features) // (in_features + out_features))

    def lora_factors(self) -> LoRAForm | None:
        """The update as exact LoRA factors (fp32), or None where it has no such form."""
        return None

    def max_rank(self) -> int:
        """Largest rank this layer allows."""
        return min(self.out_features, self.in_features)

    def lr_multipliers(self) -> dict[str, float]:
        """Per-tensor learning-rate multipliers (LoRA+); tensors not named use 1."""
        return {}

    # -- shared machinery ------------------------------------------------------------------
    def _check_rank(self, name: str) -> None:
        ranks = type(self).ranks(self.config)
        if max(ranks) > self.max_rank():
            raise AdapterConfigError(
                f"rank {max(ranks)} is larger than module {name!r} allows "
                f"(weight {self.out_features}x{self.in_features}: at most {self.max_rank()})"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base_layer(x)
        return self._adapted_forward(x)

    def _apply(self, fn, recurse: bool = True):
        """`.to()`, `.half()`, `.double()`, `.cuda()`, …: the wrapped layer converts as usual, and the W0
        kept for unmerge with it; the adapter's own tensors follow the device but stay fp32 (bf16 or
        fp16 would round small updates away, and the adapter path computes in fp32)."""
        if recurse:
            for module in self.children():
                module._apply(fn)
        if self._w0 is not None:
            self._w0 = fn(self._w0)

        def keep_fp32(tensor: torch.Tensor) -> torch.Tensor:
            converted = fn(tensor)
            if tensor.dtype == torch.float32 and converted.dtype != torch.float32 and converted.is_floating_point():
                return tensor.to(device=converted.device)
            return converted

        return super()._apply(keep_fp32, recurse=False)

    @property
    def merged(self) -> bool:
        return self._w0 is not None

    @property
    def w0(self) -> torch.Tensor:
        """The frozen base weight as a matrix (out, in*kh*kw), whether merged or not."""
        weight = self._w0 if self._w0 is not None else self.base_layer.weight
        return weight.t() if self.transposed else weight.reshape(self.out_features, self.in_features)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def ramp(self, length: int | None) -> torch.Tensor:
        """u(t) = min(t / length, 1) as a 0-dim fp32 tensor (no host sync)."""
        steps = self.config.schedule_steps(length)
        return (self.step.float() / steps).clamp(max=1.0)

    def merge(self) -> None:
        """Write W' into the base layer (computed in fp32, cast once); keep W0 for unmerge."""
        if self.merged:
            return
        weight = self.base_layer.weight
        with torch.no_grad():
            merged = self.merged_weight()
            merged = (merged.t().contiguous() if self.transposed else merged.reshape(weight.shape)).to(weight.dtype)
        self._w0 = weight.data
        weight.data = merged

    def unmerge(self) -> None:
        """Put W0 back exactly."""
        if not self.merged:
            return
        self.base_layer.weight.data = self._w0
        self._w0 = None

    # -- applying factors with the base layer's geometry -------------------------------------
    def apply_dense(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """x through a dense matrix (rows, in*kh*kw) with the base layer's geometry."""
        if not self.is_conv:
            return F.linear(x, weight, bias)
        conv = self.base_layer
        kernel = weight.reshape(weight.shape[0], *conv.weight.shape[1:])
        if conv.padding_mode != "zeros":
            x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
            return F.conv2d(x, kernel, bias, conv.stride, 0, conv.dilation)
        return F.conv2d(x, kernel, bias, conv.stride, conv.padding, conv.dilation)

    def apply_up(self, h: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """h (rank features) through an (out, rank) matrix: a linear map or a 1x1 conv."""
        if not self.is_conv:
            return F.linear(h, up)
        return F.conv2d(h, up[:, :, None, None])

    def add_up(self, out: torch.Tensor, h: torch.Tensor, up: torch.Tensor, scale: float) -> torch.Tensor:
        """out + scale * up(h), fused into one in-place addmm for Linear layers."""
        if not self.is_conv and h.dtype == out.dtype and out.is_contiguous():
            flat = out.view(-1, out.shape[-1])
            flat.addmm_(h.reshape(-1, h.shape[-1]), up.to(out.dtype).t(), alpha=scale)
            return out
        return out.add_(self.apply_up(h, up).to(out.dtype), alpha=scale)

    def _can_fuse(self, x: torch.Tensor) -> bool:
        """Whether x may go through W0 + ΔW in one matmul (variants with a dense ΔW): exact enough only in
        fp32, and only with the same input on both paths (no dropout) and a frozen base layer."""
        no_dropout = isinstance(self.dropout, nn.Identity) or not self.training
        full_precision = x.dtype == self.w0.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type)
        frozen = not any(p.requires_grad for p in self.base_layer.parameters())
        return no_dropout and full_precision and frozen

    def adapter_input(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout (adapter path only) and cast to the adapter's dtype, fp32. Under autocast the matmul casts its
        inputs itself, to the same values: an fp32 copy first would only make it save a second low-precision
        copy of x for backward (0.45 GiB on SDXL at 1024 px in bf16)."""
        x = self.dropout(x)
        return x if torch.is_autocast_enabled(x.device.type) else x.to(torch.float32)

    def channel_view(self, v: torch.Tensor) -> torch.Tensor:
        """A per-output-feature vector shaped to broadcast over this layer's output."""
        return v[:, None, None] if self.is_conv else v

    def extra_repr(self) -> str:
        return f"variant={self.config.variant}, rank={self.config.rank}, merged={self.merged}"


def is_transformers_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer whose weight is stored transposed."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


def is_adaptable(module: nn.Module) -> bool:
    """Whether an adapter can wrap this module."""
    return isinstance(module, (nn.Linear, nn.Conv2d)) or is_transformers_conv1d(module)


def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear or transformers' Conv1D: what `all-linear` selects."""
    return isinstance(module, nn.Linear) or is_transformers_conv1d(module)


# A row's ‖W0 + up·down‖² from ‖W0‖² + 2·cross + quad carries an error of a few ulps of ‖W0‖² + quad
# (which bounds |2·cross|): a row whose result falls below this fraction of it has cancelled and is
# formed and summed exactly instead. On the CPU every such row is; elsewhere (no host sync) the
# `_EXACT_ROWS` rows that cancel most in each layer, which covers any update short of cancelling
# that many rows of one layer at once.
_CANCELLED = 0.25
_EXACT_ROWS = 32


def row_sq(weight: torch.Tensor) -> torch.Tensor:
    """‖W‖² per row in fp32 (one pass, no (out, in) temporary)."""
    return torch.linalg.vector_norm(weight.to(torch.float32), dim=1).square()


def row_norm_sq(w0: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
                host_read: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖W0‖², ‖W0 + up·down‖²) per row in fp32, never forming up·down for the whole matrix.

    ‖W0 + BA‖²_i = ‖W0‖²_i + 2 Σ_k B_ik (W0 Aᵀ)_ik + (B (A Aᵀ) Bᵀ)_ii; rows where that sum cancels
    (an update that nearly cancels the row) are recomputed exactly from W0_i + (BA)_i. ‖W0‖² is
    computed here, from the weight as it is now, so new base weights (`load_state_dict`) count at once.
    `host_read` (default: on the CPU) fixes every cancelled row; without it, the `_EXACT_ROWS` worst.
    """
    w0 = w0.to(torch.float32)
    w0_sq = row_sq(w0)
    cross = (up * (w0 @ down.t())).sum(dim=1)
    quad = ((up @ (down @ down.t())) * up).sum(dim=1)
    norm_sq = w0_sq + 2.0 * cross + quad
    size = w0_sq + quad
    cancelled = norm_sq < _CANCELLED * size
    if host_read is None:
        host_read = norm_sq.device.type == "cpu"  # where reading a value back costs nothing
    if host_read:  # every cancelled row, and no extra work when none is
        rows = cancelled.nonzero()[:, 0]
        if rows.numel() == 0:
            return w0_sq, norm_sq.clamp_min_(0.0)
    else:  # no host sync: the rows that cancel most, replaced where they did cancel
        share = norm_sq / size.clamp_min(torch.finfo(torch.float32).tiny)
        rows = share.topk(min(_EXACT_ROWS, share.numel()), largest=False).indices
    exact = row_sq(torch.addmm(w0[rows], up[rows], down))
    norm_sq = norm_sq.index_copy(0, rows, torch.where(cancelled[rows], exact, norm_sq[rows]))
    return w0_sq, norm_sq.clamp_min_(0.0)
