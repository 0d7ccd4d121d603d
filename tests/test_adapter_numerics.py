"""Adapter numerics: mixed precision, dtype casts, new base weights, cancelling updates, exact identity,
DoRA dropout as PEFT has it, and Dual LoRA's fused linear path against a dense reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dreamlr.adapters import (
    VARIANTS,
    AdapterConfig,
    adapter_layers,
    attach,
    merge,
    set_step,
    trainable_parameters,
    unmerge,
)
from dreamlr.adapters import base as adapter_base

GEOMETRIES = {
    "linear": lambda: nn.Linear(12, 20),
    "conv": lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1),
}


def make_model(geometry: str, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(GEOMETRIES[geometry]())


def make_input(geometry: str, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (3, 5, 12) if geometry == "linear" else (2, 6, 9, 9)
    return torch.randn(shape, generator=generator)


def config(variant: str, **extra) -> AdapterConfig:
    options = {"ramp_steps": 10, "warmup_steps": 10}
    options.update(extra)
    return AdapterConfig(variant=variant, rank=4, alpha=8, targets=["0"], **options)


def train_like(model: nn.Module, step: int = 7, seed: int = 2, size: float = 0.1) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in trainable_parameters(model).values():
            param.add_(size * torch.randn(param.shape, generator=generator))
    set_step(model, step)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# --- item: Dual LoRA under autocast -------------------------------------------------------------

@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_dual_lora_trains_under_bf16_autocast(geometry):
    model, x = make_model(geometry), make_input(geometry)
    attach(model, config("dual_lora"))
    train_like(model, step=10)
    model.train()
    model(x).pow(2).mean().backward()
    exact = {name: p.grad.clone() for name, p in trainable_parameters(model).items()}
    for param in model.parameters():
        param.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().pow(2).mean()
    loss.backward()
    for name, param in trainable_parameters(model).items():
        assert param.dtype == torch.float32 and param.grad.dtype == torch.float32, name
        assert torch.isfinite(param.grad).all(), name
        assert rel_err(param.grad, exact[name]) < 0.05, (name, rel_err(param.grad, exact[name]))


# --- item: new base weights after attach ----------------------------------------------------------

@pytest.mark.parametrize("variant", ["dora", "d2lora"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_new_base_weights_after_attach_count_at_once(variant, geometry):
    model, x = make_model(geometry), make_input(geometry)
    attach(model, config(variant))
    train_like(model)
    layer = model[0]
    layer.base_layer.load_state_dict(make_model(geometry, seed=5)[0].state_dict())
    with torch.no_grad():
        live = model(x)
        merge(model)
        merged = model(x)
        unmerge(model)
    assert rel_err(live, merged) <= 1e-5
    with torch.no_grad():
        expected = layer.apply_dense(x, layer.merged_weight(), layer.bias)
    assert rel_err(live, expected) <= 1e-5


# --- item: updates that nearly cancel rows ---------------------------------------------------------

LEFT = 1e-3  # the share of a row's norm the update leaves


def cancel_rows(layer, rows: list[int]) -> None:
    """Set the factors so that the update leaves LEFT of each listed row of W0 (other rows: random)."""
    w0 = layer.w0.float()
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        if layer.config.variant == "dora":
            B, A, scale = layer.lora_B, layer.lora_A, layer.scale
            layer.magnitude.add_(0.1 * torch.randn(layer.magnitude.shape, generator=generator))
        else:
            B, A, scale = layer.pos_B, layer.pos_A, layer.scale
            layer.neg_B.copy_(0.1 * torch.randn(layer.neg_B.shape, generator=generator))
            layer.neg_B[rows] = 0.0
        B.copy_(0.1 * torch.randn(B.shape, generator=generator))
        for k, row in enumerate(rows):
            A[k] = w0[row]
            B[row] = 0.0
            B[row, k] = -(1.0 - LEFT) / scale


def reference_output(layer, x: torch.Tensor) -> torch.Tensor:
    """The variant's W' in float64 from the layer's fp32 tensors, applied in float64."""
    w0 = layer.w0.double()
    if layer.config.variant == "dora":
        adapted = w0 + layer.scale * (layer.lora_B.double() @ layer.lora_A.double())
        weight = layer.magnitude.double()[:, None] * adapted / adapted.norm(dim=1, keepdim=True)
    else:
        up, down = (t.double() for t in layer.factors())
        delta = up @ down
        adapted = w0 + delta
        weight = adapted * (w0.norm(dim=1) / adapted.norm(dim=1))[:, None] + delta
    bias = None if layer.bias is None else layer.bias.double()
    return layer.apply_dense(x.double(), weight.detach(), bias)


@pytest.mark.parametrize("variant", ["dora", "d2lora"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_row_norms_survive_an_update_that_nearly_cancels_rows(variant, geometry):
    model, x = make_model(geometry), make_input(geometry)
    attach(model, config(variant))
    layer = model[0]
    cancel_rows(layer, [1, 4, 7])
    with torch.no_grad():
        reference = reference_output(layer, x)
        live = model(x)
        merge(model)
        merged = model(x)
    assert rel_err(live, reference) < 1e-3
    assert rel_err(merged, reference) < 1e-3


@pytest.mark.parametrize("host_read", [True, False])
def test_row_norm_sq_recomputes_cancelled_rows_exactly(host_read, monkeypatch):
    generator = torch.Generator().manual_seed(0)
    out, inner, rank = 48, 24, 3
    w0 = torch.randn(out, inner, generator=generator)
    down = torch.randn(rank, inner, generator=generator)
    up = 0.05 * torch.randn(out, rank, generator=generator)
    # the first rank rows cancel to 0.1 %: W0_i = −(1 − 1e-3)·up_i·down
    w0[:rank] = -(up[:rank] @ down) / (1 - LEFT)
    monkeypatch.setattr(adapter_base, "_EXACT_ROWS", 4)  # fewer than the rows checked below
    w0_sq, norm_sq = adapter_base.row_norm_sq(w0, up, down, host_read=host_read)
    exact = (w0.double() + up.double() @ down.double()).pow(2).sum(dim=1)
    torch.testing.assert_close(w0_sq.double(), w0.double().pow(2).sum(dim=1), rtol=1e-6, atol=0)
    torch.testing.assert_close(norm_sq.double(), exact, rtol=1e-4, atol=0)
    # on the host-read path every cancelled row is fixed, however many there are
    if host_read:
        w0[:10] = -(up[:10] @ down) / (1 - LEFT)
        _, norm_sq = adapter_base.row_norm_sq(w0, up, down, host_read=True)
        exact = (w0.double() + up.double() @ down.double()).pow(2).sum(dim=1)
        torch.testing.assert_close(norm_sq.double(), exact, rtol=1e-4, atol=0)


# --- item: dtype casts after attach ----------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_casting_the_model_keeps_adapters_fp32(variant, geometry):
    model, x = make_model(geometry), make_input(geometry)
    attach(model, config(variant))
    train_like(model)
    with torch.no_grad():
        full = model(x)
    model.to(torch.bfloat16)
    layer = model[0]
    assert layer.base_layer.weight.dtype == torch.bfloat16
    for name, param in trainable_parameters(model).items():
        assert param.dtype == torch.float32, name
    assert layer.step.dtype == torch.long
    low = model(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    assert rel_err(low.detach(), full) < 0.03
    low.float().pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable_parameters(model).values())
    model.half()
    assert layer.base_layer.weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in trainable_parameters(model).values())
    model.double()
    assert all(p.dtype == torch.float32 for p in trainable_parameters(model).values())
    with torch.no_grad():
        assert rel_err(model(x.double()), full) < 0.03  # W0 went through bf16 and fp16 on the way
    model.float()
    assert layer.base_layer.weight.dtype == torch.float32


@pytest.mark.parametrize("variant", VARIANTS)
def test_casting_while_merged_casts_the_saved_w0(variant):
    model, x = make_model("linear"), make_input("linear")
    w0 = model[0].weight.detach().clone()
    attach(model, config(variant))
    train_like(model)
    merge(model)
    model.to(torch.bfloat16)
    unmerge(model)
    weight = model[0].base_layer.weight
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, w0.to(torch.bfloat16))
    with torch.no_grad():
        model(x.to(torch.bfloat16))  # the live path runs after the round trip


# --- item: identity at attach ----------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["dora", "d2lora"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_identity_at_attach_is_bit_exact(variant, geometry):
    model, x = make_model(geometry), make_input(geometry)
    reference = model(x)
    attach(model, config(variant))
    assert torch.equal(model(x), reference)
    assert torch.equal(model.train()(x), reference)


# --- item: DoRA with dropout, as PEFT -------------------------------------------------------------

class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(12, 20)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.up(x), self.conv(image)


def test_dora_dropout_in_training_matches_peft():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    reference = get_peft_model(Toy(), LoraConfig(r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["up", "conv"],
                                                 use_dora=True))
    torch.manual_seed(0)
    ours = Toy()
    attach(ours, AdapterConfig(variant="dora", rank=4, alpha=8, lora_dropout=0.5, targets=["up", "conv"]))
    layers = dict(adapter_layers(ours))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in ("up", "conv"):
            theirs = reference.base_model.model.get_submodule(name)
            pairs = [(theirs.lora_A["default"].weight, layers[name].lora_A),
                     (theirs.lora_B["default"].weight, layers[name].lora_B),
                     (theirs.lora_magnitude_vector["default"].weight, layers[name].magnitude)]
            for peft_tensor, mine in pairs:
                values = peft_tensor.float() + 0.3 * torch.randn(peft_tensor.shape, generator=generator)
                peft_tensor.copy_(values)
                mine.copy_(values.reshape(mine.shape))
    x = torch.randn(4, 12, generator=generator)
    image = torch.randn(2, 3, 9, 9, generator=generator)
    reference.train()
    ours.train()
    torch.manual_seed(11)
    ref_out = reference(x, image)
    torch.manual_seed(11)
    our_out = ours(x, image)
    for ref, mine in zip(ref_out, our_out):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    sum(o.pow(2).sum() for o in ref_out).backward()
    sum(o.pow(2).sum() for o in our_out).backward()
    for name in ("up", "conv"):
        theirs = reference.base_model.model.get_submodule(name)
        for peft_tensor, mine in ((theirs.lora_A["default"].weight, layers[name].lora_A),
                                  (theirs.lora_B["default"].weight, layers[name].lora_B),
                                  (theirs.lora_magnitude_vector["default"].weight, layers[name].magnitude)):
            torch.testing.assert_close(mine.grad, peft_tensor.grad.reshape(mine.shape), rtol=1e-4, atol=1e-5)
    # the dropout reached the output: eval differs from training
    with torch.no_grad():
        assert not torch.allclose(ours.eval()(x, image)[0], our_out[0])


# --- item: Dual LoRA's fused linear path -----------------------------------------------------------

def dual_reference_grads(layer, x: torch.Tensor, upstream: torch.Tensor, clip: bool) -> dict[str, torch.Tensor]:
    """Dual LoRA written densely with autograd (straight-through Sign by hand), in float64."""
    factors = {n: getattr(layer, n).detach().double().requires_grad_() for n in layer.tensor_names}
    r1, r2 = layer.config.sub_ranks
    coef = layer.warmup_factor().double() * layer.config.alpha / (r1 * r2) ** 0.5
    dc = factors["dir_B"] @ factors["dir_A"]
    sign = torch.where(dc > 0, 1.0, -1.0).double()
    passes = ((dc.abs() <= 1) if clip else torch.ones_like(dc, dtype=torch.bool)).double()
    straight_through = dc * passes - (dc * passes).detach() + sign  # value Sign(DC), gradient through the mask
    delta = coef * torch.relu(factors["mag_B"] @ factors["mag_A"]) * straight_through
    out = layer.apply_dense(x.double(), layer.w0.double() + delta, layer.bias.double())
    (out * upstream.double()).sum().backward()
    return {n: t.grad for n, t in factors.items()}


@pytest.mark.parametrize("ste", ["clip", "identity"])
@pytest.mark.parametrize("spread", [1.0, 300.0])
def test_dual_lora_fused_linear_gradients(ste, spread):
    model, x = make_model("linear"), make_input("linear")
    attach(model, config("dual_lora", ste=ste))
    train_like(model, step=6)
    layer = model[0]
    with torch.no_grad():  # spread D·C beyond [−1, 1] (or not) so that the clip clips (or not)
        layer.dir_B.mul_(spread)
        inside = ((layer.dir_B @ layer.dir_A).abs() <= 1).float().mean()
    assert inside == 1 if spread == 1.0 else 0 < inside < 1
    x.requires_grad_()
    assert layer._can_fuse(x)
    out = model(x)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    (out * upstream).sum().backward()
    expected = dual_reference_grads(layer, x.detach(), upstream, ste == "clip")
    for name in layer.tensor_names:
        torch.testing.assert_close(getattr(layer, name).grad.double(), expected[name], rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        reference_x_grad = upstream @ (layer.w0 + layer.delta_weight())
    torch.testing.assert_close(x.grad, reference_x_grad, rtol=1e-5, atol=1e-6)
