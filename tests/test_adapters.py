"""Every variant on Linear and Conv2d: identity, merge, unmerge, save/load, gradients, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from dreamlr.adapters import (
    VARIANTS,
    AdapterConfig,
    attach,
    count_parameters,
    load_adapter,
    merge,
    save_adapter,
    set_step,
    trainable_parameters,
    unmerge,
)

GEOMETRIES = {
    "linear_out_gt_in": lambda: nn.Linear(12, 20),
    "linear_in_gt_out": lambda: nn.Linear(20, 12),
    "conv_1x1": lambda: nn.Conv2d(6, 10, 1),
    "conv_3x3": lambda: nn.Conv2d(6, 10, 3, stride=2, padding=1),
}
RANK = 4


def make_model(geometry: str, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(GEOMETRIES[geometry]())


def make_input(geometry: str, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if geometry.startswith("linear"):
        in_features = GEOMETRIES[geometry]().in_features
        return torch.randn(3, 5, in_features, generator=generator)
    return torch.randn(2, 6, 9, 9, generator=generator)


def config(variant: str, **extra) -> AdapterConfig:
    options = {"ramp_steps": 10, "warmup_steps": 10}
    options.update(extra)
    return AdapterConfig(variant=variant, rank=RANK, alpha=2 * RANK, targets=["0"], **options)


def train_like(model: nn.Module, step: int = 7, seed: int = 2) -> None:
    """Random updates of the size training makes, and a step inside the ramps."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in trainable_parameters(model).values():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    set_step(model, step)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def expected_count(variant: str, out_f: int, in_f: int, r: int = RANK) -> int:
    """DESIGN §2's parameter column, written out independently of the layer classes."""
    return {
        "lora": r * (in_f + out_f),
        "loraplus": r * (in_f + out_f),
        "dora": r * (in_f + out_f) + out_f,
        "singlora": r * max(out_f, in_f),
        "dual_lora": r * (in_f + out_f),
        "d2lora": 2 * r * (in_f + out_f),
        "loha": 2 * r * (in_f + out_f),
    }[variant]


CASES = [(v, g) for v in VARIANTS for g in GEOMETRIES]


@pytest.mark.parametrize("variant,geometry", CASES)
def test_identity_at_attach(variant, geometry):
    model, x = make_model(geometry), make_input(geometry)
    reference = model(x)
    attach(model, config(variant))
    assert torch.equal(model(x), reference)  # bit for bit, DoRA and D2-LoRA included


@pytest.mark.parametrize("variant,geometry", CASES)
def test_merge_matches_unmerged_and_unmerge_is_exact(variant, geometry):
    model, x = make_model(geometry), make_input(geometry)
    w0 = model[0].weight.detach().clone()
    attach(model, config(variant))
    train_like(model)
    with torch.no_grad():
        live = model(x)
        merge(model)
        assert not torch.equal(model[0].base_layer.weight, w0)
        merged = model(x)
        unmerge(model)
        assert torch.equal(model[0].base_layer.weight, w0)
        again = model(x)
    assert rel_err(merged, live) <= 1e-5
    assert torch.equal(again, live)


@pytest.mark.parametrize("variant,geometry", CASES)
def test_save_load_roundtrip(variant, geometry, tmp_path):
    model, x = make_model(geometry), make_input(geometry)
    attach(model, config(variant))
    train_like(model)
    path = save_adapter(model, tmp_path / "adapter.safetensors", metadata={"base_model": "unit"})
    fresh = make_model(geometry)
    names = load_adapter(fresh, path)
    assert names == ["0"]
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert int(fresh[0].step) == 7


@pytest.mark.parametrize("variant,geometry", CASES)
def test_gradients_reach_adapter_tensors_only(variant, geometry):
    model, x = make_model(geometry), make_input(geometry)
    attach(model, config(variant))
    train_like(model)
    adapter = trainable_parameters(model)
    requiring = {n for n, p in model.named_parameters() if p.requires_grad}
    assert requiring == {n for n in adapter}
    model(x).pow(2).sum().backward()
    for name, param in adapter.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert model[0].base_layer.weight.grad is None


@pytest.mark.parametrize("variant,geometry", CASES)
def test_parameter_counts(variant, geometry):
    model = make_model(geometry)
    weight = model[0].weight
    out_f, in_f = weight.shape[0], weight[0].numel()
    attach(model, config(variant))
    assert count_parameters(model) == expected_count(variant, out_f, in_f)


@pytest.mark.parametrize("variant", VARIANTS)
def test_dropout_keeps_one_base_matmul(variant):
    model, x = make_model("linear_out_gt_in"), make_input("linear_out_gt_in")
    base_weight = model[0].weight
    attach(model, config(variant, lora_dropout=0.5))
    train_like(model)
    model.train()

    class CountBaseMatmuls(TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.linear and args[1].data_ptr() == base_weight.data_ptr():
                CountBaseMatmuls.calls += 1
            return func(*args, **(kwargs or {}))

    with CountBaseMatmuls():
        model(x)
    # DoRA in training follows PEFT and the DoRA authors: (m/‖V‖ − 1)·W0 also takes the dropped input
    assert CountBaseMatmuls.calls == (2 if variant == "dora" else 1)
    CountBaseMatmuls.calls = 0
    with CountBaseMatmuls(), torch.no_grad():
        model.eval()(x)
    assert CountBaseMatmuls.calls <= 1  # Dual LoRA multiplies by W0 + ΔW instead


def test_dropout_applies_to_the_adapter_path_only():
    model, x = make_model("linear_out_gt_in"), make_input("linear_out_gt_in")
    reference = model(x)
    attach(model, config("lora", lora_dropout=0.9))
    model.train()
    assert torch.equal(model(x), reference)  # B = 0: nothing of the dropout reaches the output
    train_like(model)
    eval_out = model.eval()(x)
    assert not torch.allclose(model.train()(x), eval_out)


# --- variant-specific math ------------------------------------------------------------------

@pytest.mark.parametrize("geometry", ["linear_out_gt_in", "linear_in_gt_out", "conv_3x3"])
def test_singlora_ramp_and_nonsquare_form(geometry):
    model, x = make_model(geometry), make_input(geometry)
    attach(model, config("singlora", ramp_steps=10))
    train_like(model, step=0)
    layer = model[0]
    A = layer.lora_A
    out_f, in_f = layer.out_features, layer.in_features
    assert A.shape == (max(out_f, in_f), RANK)
    w0 = layer.w0.float()
    deltas = {}
    for step in (0, 5, 10, 30):
        set_step(model, step)
        deltas[step] = layer.merged_weight().detach() - w0
    full = layer.scale * A[:out_f] @ A[:in_f].t()
    assert torch.equal(deltas[0], torch.zeros_like(full))
    torch.testing.assert_close(deltas[5], 0.5 * full.detach())
    torch.testing.assert_close(deltas[10], full.detach())
    torch.testing.assert_close(deltas[30], full.detach())
    set_step(model, 5)
    with torch.no_grad():
        live = model(x)
        expected = layer.apply_dense(x, w0 + 0.5 * full, layer.bias)
    torch.testing.assert_close(live, expected, rtol=1e-5, atol=1e-5)


def test_singlora_default_ramp_is_one_percent_of_the_run():
    cfg = AdapterConfig(variant="singlora", rank=4, targets=["0"], total_steps=800)
    assert cfg.schedule_steps(cfg.ramp_steps) == 8
    assert AdapterConfig(variant="singlora", rank=4, targets=["0"], total_steps=20).schedule_steps(None) == 1


@pytest.mark.parametrize("ste", ["clip", "identity"])
def test_dual_lora_straight_through_gradient(ste):
    model = make_model("linear_in_gt_out")
    attach(model, config("dual_lora", ste=ste, warmup_steps=4))
    layer = model[0]
    with torch.no_grad():  # spread D·C beyond [-1, 1] so the clipped STE has something to clip
        layer.dir_B.mul_(300.0)
        layer.mag_B.mul_(50.0)
    set_step(model, 4)
    upstream = torch.randn(layer.out_features, layer.in_features)
    (layer.delta_weight() * upstream).sum().backward()

    r1, r2 = layer.config.sub_ranks
    with torch.no_grad():
        magnitude = torch.relu(layer.mag_B @ layer.mag_A)
        dc = layer.dir_B @ layer.dir_A
        sign = torch.where(dc > 0, 1.0, -1.0)
        coef = layer.config.alpha / (r1 * r2) ** 0.5
        pass_through = (dc.abs() <= 1).float() if ste == "clip" else torch.ones_like(dc)
        grad_dc = upstream * coef * magnitude * pass_through
        grad_ba = upstream * coef * sign * ((layer.mag_B @ layer.mag_A) > 0).float()
    assert 0 < (dc.abs() <= 1).float().mean() < 1
    torch.testing.assert_close(layer.dir_B.grad, grad_dc @ layer.dir_A.t().detach())
    torch.testing.assert_close(layer.dir_A.grad, layer.dir_B.t().detach() @ grad_dc)
    torch.testing.assert_close(layer.mag_B.grad, grad_ba @ layer.mag_A.t().detach())


def test_dual_lora_sign_of_zero_is_minus_one_and_warmup():
    model = make_model("linear_out_gt_in")
    attach(model, config("dual_lora", warmup_steps=8))
    layer = model[0]
    set_step(model, 0)
    assert torch.equal(layer.delta_weight(), torch.zeros(layer.out_features, layer.in_features))
    set_step(model, 8)
    full = layer.delta_weight().detach()
    assert full.abs().sum() > 0
    set_step(model, 2)
    torch.testing.assert_close(layer.delta_weight().detach(), 0.25 * full)
    set_step(model, 100)
    torch.testing.assert_close(layer.delta_weight().detach(), full)
    with torch.no_grad():
        layer.dir_B.zero_()  # D·C = 0: Sign gives −1 there
    expected = -torch.relu(layer.mag_B @ layer.mag_A) * layer.config.alpha / 2
    torch.testing.assert_close(layer.delta_weight().detach(), expected.detach())


def test_dual_lora_odd_rank_needs_explicit_subranks():
    with pytest.raises(ValueError, match="odd"):
        AdapterConfig(variant="dual_lora", rank=5)
    cfg = AdapterConfig(variant="dual_lora", rank=5, magnitude_rank=2, direction_rank=3, targets=["0"])
    model = make_model("linear_out_gt_in")
    attach(model, cfg)
    assert count_parameters(model) == 5 * (12 + 20)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_d2lora_row_norms_after_projection(geometry):
    model = make_model(geometry)
    attach(model, config("d2lora", residual_after_projection=True))
    train_like(model)
    layer = model[0]
    w0_norms = layer.w0.float().norm(dim=1)
    up, down = layer.factors()
    delta = (up @ down).detach()
    merged = layer.merged_weight().detach()
    torch.testing.assert_close((merged - delta).norm(dim=1), w0_norms)  # P(W0+ΔW), before the residual
    assert not torch.allclose(merged.norm(dim=1), w0_norms)

    plain = make_model(geometry)
    attach(plain, config("d2lora", residual_after_projection=False))
    train_like(plain)
    torch.testing.assert_close(plain[0].merged_weight().detach().norm(dim=1), w0_norms)

    none = make_model(geometry)
    attach(none, config("d2lora", projection="none"))
    train_like(none)
    up, down = none[0].factors()
    torch.testing.assert_close(none[0].merged_weight().detach(), none[0].w0.float() + (up @ down).detach())


def test_d2lora_negative_branch_weighted_by_tau():
    model = make_model("linear_out_gt_in")
    attach(model, config("d2lora", tau=0.25, projection="none"))
    train_like(model)
    layer = model[0]
    expected = layer.scale * (layer.pos_B @ layer.pos_A - 0.25 * layer.neg_B @ layer.neg_A)
    torch.testing.assert_close(layer.merged_weight() - layer.w0, expected)


@pytest.mark.parametrize("geometry", ["linear_in_gt_out", "conv_3x3"])
def test_dora_norm_is_detached(geometry):
    model, x = make_model(geometry), make_input(geometry)
    attach(model, config("dora"))
    train_like(model)
    layer = model[0]
    model(x).pow(2).sum().backward()
    ours = {n: p.grad.clone() for n, p in trainable_parameters(model).items()}

    # the same function written densely, the norm treated as a constant
    A = layer.lora_A.detach().clone().requires_grad_()
    B = layer.lora_B.detach().clone().requires_grad_()
    m = layer.magnitude.detach().clone().requires_grad_()
    adapted = layer.w0 + layer.scale * B @ A
    weight = (m / adapted.norm(dim=1).detach())[:, None] * adapted
    layer.apply_dense(x, weight, layer.bias).pow(2).sum().backward()
    torch.testing.assert_close(ours["0.lora_A"], A.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours["0.lora_B"], B.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours["0.magnitude"], m.grad, rtol=1e-4, atol=1e-5)


def test_dora_forward_never_forms_BA():
    model, x = make_model("linear_in_gt_out"), make_input("linear_in_gt_out")
    attach(model, config("dora"))
    train_like(model)
    layer = model[0]
    dense_shape = (layer.out_features, layer.in_features)

    class WatchShapes(TorchFunctionMode):
        dense_results = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if func in (torch.matmul, torch.Tensor.__matmul__, torch.mm) and getattr(result, "shape", None) == dense_shape:
                WatchShapes.dense_results += 1
            return result

    with WatchShapes():
        model(x)
    assert WatchShapes.dense_results == 0


def test_loraplus_parameter_groups():
    from dreamlr.adapters import parameter_groups

    model = make_model("linear_out_gt_in")
    attach(model, config("loraplus", lr_ratio=8.0))
    groups = {g["lr"]: g["params"] for g in parameter_groups(model, lr=1e-4)}
    assert set(groups) == {1e-4, 8e-4}
    assert groups[8e-4] == [model[0].lora_B] and groups[1e-4] == [model[0].lora_A]


def test_dual_lora_fused_matmul_equals_two_paths():
    model, x = make_model("linear_in_gt_out"), make_input("linear_in_gt_out")
    attach(model, config("dual_lora"))
    train_like(model)
    layer = model[0]
    assert layer._can_fuse(x)
    with torch.no_grad():
        two_paths = layer.base_layer(x) + layer.apply_dense(x, layer.delta_weight())
        torch.testing.assert_close(model(x), two_paths, rtol=1e-5, atol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not layer._can_fuse(x)


@pytest.mark.parametrize("variant", VARIANTS)
def test_transformers_conv1d_is_a_transposed_linear(variant, tmp_path):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(20, 12))  # GPT-2 style: 12 -> 20, weight stored (12, 20)
    x = make_input("linear_out_gt_in")
    reference = model(x)
    w0 = model[0].weight.detach().clone()
    attach(model, config(variant))
    assert count_parameters(model) == expected_count(variant, 20, 12)
    assert torch.equal(model(x), reference)
    train_like(model)
    with torch.no_grad():
        live = model(x)
        merge(model)
        assert rel_err(model(x), live) <= 1e-5
        unmerge(model)
    assert torch.equal(model[0].base_layer.weight, w0)


def test_singlora_init_uses_the_layers_fan_in():
    """A (rows, r) is drawn as LoRA's A would be, with bound 1/√in, so A·Aᵀ starts small next to W0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(384, 1536))
    attach(model, config("singlora"))
    A = model[0].lora_A
    assert A.abs().max() <= 1 / 384**0.5
    assert A.std() > 0.5 / (3 * 384) ** 0.5
