"""Our `lora` and `dora` against PEFT's LoRA and DoRA given the same tensors, and bf16 merge accuracy."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from dreamlr.adapters import AdapterConfig, adapter_layers, attach, merge


class Toy(nn.Module):
    """Linear out>in, Linear in>out and a 3x3 strided Conv2d, in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(12, 20)
        self.down = nn.Linear(20, 12)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x))).sum() + self.conv(image).sum(), self.down(self.up(x))


def toy(dtype: torch.dtype = torch.float32) -> Toy:
    torch.manual_seed(0)
    return Toy().to(dtype)


TARGETS = ["up", "down", "conv"]


def peft_pair(variant: str, dtype: torch.dtype = torch.float32):
    """A PEFT model and ours, holding the same random (trained-looking) adapter tensors."""
    reference = get_peft_model(
        toy(dtype), LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, use_dora=variant == "dora")
    )
    ours = toy(dtype)
    attach(ours, AdapterConfig(variant=variant, rank=4, alpha=8, targets=TARGETS))
    generator = torch.Generator().manual_seed(3)
    layers = dict(adapter_layers(ours))
    with torch.no_grad():
        for name in TARGETS:
            peft_layer = reference.base_model.model.get_submodule(name)
            ours_layer = layers[name]
            pairs = [(peft_layer.lora_A["default"].weight, ours_layer.lora_A),
                     (peft_layer.lora_B["default"].weight, ours_layer.lora_B)]
            if variant == "dora":
                pairs.append((peft_layer.lora_magnitude_vector["default"].weight, ours_layer.magnitude))
            for theirs, mine in pairs:
                values = theirs.float() + 0.3 * torch.randn(theirs.shape, generator=generator)
                theirs.copy_(values)
                mine.copy_(values.reshape(mine.shape))
    return reference, ours


def inputs(dtype: torch.dtype = torch.float32):
    generator = torch.Generator().manual_seed(1)
    return torch.randn(4, 12, generator=generator).to(dtype), torch.randn(2, 3, 9, 9, generator=generator).to(dtype)


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_outputs_match_peft(variant):
    reference, ours = peft_pair(variant)
    x, image = inputs()
    with torch.no_grad():
        ref_sum, ref_out = reference(x, image)
        our_sum, our_out = ours(x, image)
        ref_conv = reference.base_model.model.conv(image)
        our_conv = ours.conv(image)
    torch.testing.assert_close(our_out, ref_out, rtol=0, atol=1e-6)
    torch.testing.assert_close(our_conv, ref_conv, rtol=0, atol=1e-6)
    torch.testing.assert_close(our_sum, ref_sum, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_gradients_match_peft(variant):
    reference, ours = peft_pair(variant)
    x, image = inputs()
    reference(x, image)[0].backward()
    ours(x, image)[0].backward()
    layer = dict(adapter_layers(ours))["up"]
    peft_layer = reference.base_model.model.up
    torch.testing.assert_close(layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_bf16_merge_no_less_accurate_than_peft(variant):
    reference, ours = peft_pair(variant, dtype=torch.bfloat16)
    layers = dict(adapter_layers(ours))
    exact = {name: layers[name].merged_weight().double() for name in TARGETS}  # fp32 adapters, bf16 W0
    merge(ours)
    merged_peft = reference.merge_and_unload()
    for name in TARGETS:
        shape = exact[name].shape
        ours_w = layers[name].base_layer.weight.double().reshape(shape)
        peft_w = merged_peft.get_submodule(name).weight.double().reshape(shape)
        assert layers[name].base_layer.weight.dtype == torch.bfloat16
        err_ours = (ours_w - exact[name]).norm().item()
        err_peft = (peft_w - exact[name]).norm().item()
        assert err_ours <= err_peft, (name, err_ours, err_peft)
