"""Adapter files: loading applies the file's config (also into merged models), refuses non-finite tensors and
broken headers with one line naming the file, and saving is byte-reproducible with the usual file mode."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from dreamlr.adapters import (
    AdapterConfig,
    AdapterFileError,
    adapter_layers,
    attach,
    load_adapter,
    merge,
    parameter_groups,
    save_adapter,
    set_step,
    trainable_parameters,
    unmerge,
)
from dreamlr.cli import main

STEP = 5  # half-way up a ramp / warm-up of 10 (or of 1% of 1000 total steps)


def base_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Conv2d(5, 3, 3, padding=1))


def adapted(options: dict, seed: int) -> nn.Module:
    """The same base model with an adapter of `options` whose tensors are random (seed) and far from init."""
    model = base_model()
    settings = {"rank": 2, "targets": ["0", "2"], "ramp_steps": 10, "warmup_steps": 10, **options}
    attach(model, AdapterConfig(**settings))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in trainable_parameters(model).values():
            param.add_(torch.randn(param.shape, generator=generator))
    set_step(model, STEP)
    return model


def run(model: nn.Module, seed: int = 0) -> torch.Tensor:
    x = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(1)  # the same dropout masks for every model
    return model[2](model[1](model[0](x)).permute(0, 3, 1, 2))


def direction_grads(model: nn.Module) -> list[torch.Tensor]:
    model.zero_grad()
    run(model).square().sum().backward()
    return [layer.dir_B.grad.clone() for _, layer in adapter_layers(model)]


# (variant, the file's options, the attached model's options): every config field that changes the function
CONFIG_CASES = [
    ("lora", {"alpha": 4.0}, {"alpha": 2.0}),
    ("lora", {"lora_dropout": 0.5}, {"lora_dropout": 0.1}),
    ("loraplus", {"alpha": 4.0}, {}),
    ("loraplus", {"lr_ratio": 4.0}, {"lr_ratio": 16.0}),
    ("dora", {"alpha": 4.0}, {}),
    ("dora", {"lora_dropout": 0.5}, {}),
    ("singlora", {"alpha": 4.0}, {}),
    ("singlora", {"ramp_steps": 10}, {"ramp_steps": 20}),
    ("singlora", {"ramp_steps": None, "total_steps": 1000}, {"ramp_steps": None, "total_steps": 2000}),
    ("dual_lora", {"alpha": 4.0}, {}),
    ("dual_lora", {"warmup_steps": 10}, {"warmup_steps": 20}),
    ("dual_lora", {"warmup_steps": None, "total_steps": 1000}, {"warmup_steps": None, "total_steps": 2000}),
    ("dual_lora", {"ste": "identity"}, {"ste": "clip"}),
    ("dual_lora", {"lora_dropout": 0.5}, {}),
    ("d2lora", {"alpha": 4.0}, {}),
    ("d2lora", {"tau": 0.25}, {"tau": 0.5}),
    ("d2lora", {"projection": "none"}, {"projection": "row"}),
    ("d2lora", {"residual_after_projection": False}, {"residual_after_projection": True}),
]


@pytest.mark.parametrize(("variant", "in_file", "in_model"), CONFIG_CASES,
                         ids=[f"{v}-{list(f)[-1]}" for v, f, _ in CONFIG_CASES])
def test_load_into_an_adapted_model_applies_the_files_config(variant, in_file, in_model, tmp_path):
    saved = adapted({"variant": variant, **in_file}, seed=1)
    path = save_adapter(saved, tmp_path / "a.safetensors")
    target = adapted({"variant": variant, **in_model}, seed=2)
    copied_only = adapted({"variant": variant, **in_model}, seed=2)  # what loading did before: tensors only
    with torch.no_grad():
        for name, param in trainable_parameters(copied_only).items():
            param.copy_(trainable_parameters(saved)[name])
    dropout = in_file.get("lora_dropout", 0) > 0
    for model in (saved, target, copied_only):
        model.train(dropout)

    load_adapter(target, path)

    assert all(layer.config == saved[0].config for _, layer in adapter_layers(target))
    if "lr_ratio" in in_file:
        lrs = sorted(group["lr"] for group in parameter_groups(target, 1.0))
        assert lrs == sorted(group["lr"] for group in parameter_groups(saved, 1.0)) == [1.0, 4.0]
        assert sorted(g["lr"] for g in parameter_groups(copied_only, 1.0)) == [1.0, 16.0]
    elif "ste" in in_file:  # the STE changes gradients, not outputs
        expected = direction_grads(saved)
        assert all(torch.equal(a, b) for a, b in zip(direction_grads(target), expected))
        assert not all(torch.equal(a, b) for a, b in zip(direction_grads(copied_only), expected))
    else:
        with torch.no_grad():
            expected = run(saved)
            assert torch.equal(run(target), expected)
            assert not torch.allclose(run(copied_only), expected, rtol=1e-3, atol=1e-4)  # the field matters


def test_load_refuses_a_config_that_does_not_fit_the_attached_tensors(tmp_path):
    saved = adapted({"variant": "dual_lora", "rank": 4, "magnitude_rank": 1, "direction_rank": 3}, seed=1)
    path = save_adapter(saved, tmp_path / "a.safetensors")
    target = adapted({"variant": "dual_lora", "rank": 4}, seed=2)
    before = {k: v.clone() for k, v in trainable_parameters(target).items()}
    with pytest.raises(AdapterFileError, match="a.safetensors"):
        load_adapter(target, path)
    assert all(torch.equal(before[k], v) for k, v in trainable_parameters(target).items())


@pytest.mark.parametrize("variant", ["lora", "dora", "singlora", "dual_lora", "d2lora"])
def test_load_into_a_merged_model_merges_the_loaded_adapter(variant, tmp_path):
    saved = adapted({"variant": variant, "alpha": 4.0, "tau": 0.25}, seed=1)
    path = save_adapter(saved, tmp_path / "a.safetensors")
    target = adapted({"variant": variant}, seed=2)
    target.eval(), saved.eval()
    w0 = [layer.base_layer.weight.detach().clone() for _, layer in adapter_layers(target)]
    merge(target)
    set_step(target, 0)  # the file's step (5) must come back, and be merged in

    load_adapter(target, path)

    assert all(layer.merged for _, layer in adapter_layers(target))
    with torch.no_grad():
        expected = run(saved)
        torch.testing.assert_close(run(target), expected, rtol=1e-5, atol=1e-5)
        unmerge(target)
        assert all(torch.equal(layer.base_layer.weight, w) for (_, layer), w in zip(adapter_layers(target), w0))
        assert torch.equal(run(target), expected)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("attached", [False, True])
def test_load_refuses_a_non_finite_tensor_and_leaves_the_model_alone(value, attached, tmp_path):
    saved = adapted({"variant": "lora"}, seed=1)
    with torch.no_grad():
        saved[2].lora_B[1, 0] = value
    path = save_adapter(saved, tmp_path / "bad.safetensors")
    target = adapted({"variant": "lora"}, seed=2) if attached else base_model()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(AdapterFileError) as error:
        load_adapter(target, path)
    message = str(error.value)
    assert "bad.safetensors" in message and "'2.lora_B'" in message and "\n" not in message
    assert target.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_saving_one_model_twice_gives_identical_bytes(tmp_path):
    model = adapted({"variant": "d2lora"}, seed=1)
    metadata = {"base_model": "tiny", "prompt": "a photo of sks mug", "z": 1, "a": [1, 2], "nested": {"b": 1, "a": 2}}
    first = save_adapter(model, tmp_path / "a.safetensors", metadata=metadata).read_bytes()
    second = save_adapter(model, tmp_path / "b.safetensors", metadata=dict(reversed(list(metadata.items()))))
    assert first == second.read_bytes()
    with safe_open(second, framework="pt") as handle:  # still a valid file with every key
        assert json.loads(handle.metadata()["metadata"]) == metadata
        assert sorted(handle.keys()) == sorted(trainable_parameters(model))
    loaded = load_file(second)
    assert all(torch.equal(loaded[k], v) for k, v in trainable_parameters(model).items())


def test_adapter_file_mode_follows_the_umask(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = save_adapter(adapted({"variant": "lora"}, seed=1), tmp_path / "a.safetensors")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    (tmp_path / "other.txt").write_text("x")
    assert path.stat().st_mode & 0o777 == (tmp_path / "other.txt").stat().st_mode & 0o777


def test_two_identical_training_runs_give_byte_identical_adapter_files(tmp_path):
    from test_train import run_config

    from dreamlr.diffusion import train as train_module

    settings = dict(checkpointing_steps=2, adapter={"variant": "dora", "rank": 2, "targets": "attn"})
    runs = [train_module.train(run_config(tmp_path / name, **settings)) for name in ("a", "b")]
    files = ["adapter.safetensors", "checkpoints/step-2/adapter.safetensors"]
    for name in files:
        digests = {hashlib.sha256((run / name).read_bytes()).hexdigest() for run in runs}
        assert len(digests) == 1, name
    config_mode = (runs[0] / "config.yaml").stat().st_mode & 0o777
    assert all((run / name).stat().st_mode & 0o777 == config_mode for run in runs for name in files)


# -- broken files through the command line: one line naming the file, exit 2 ------------------------------
@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory) -> Path:
    from dreamlr.diffusion import load_pipeline

    pipe = load_pipeline("tiny")
    attach(pipe.unet, AdapterConfig(rank=2, targets="attn-qk"))
    path = tmp_path_factory.mktemp("adapter") / "good.safetensors"
    return save_adapter(nn.ModuleDict({"unet": pipe.unet}), path, metadata={"base_model": "tiny"})


def rewrite_header(source: Path, target: Path, change) -> Path:
    with safe_open(source, framework="pt") as handle:
        header = dict(handle.metadata())
    change(header)
    save_file(load_file(source), target, metadata=header)
    return target


def set_config(header: dict, **changes) -> None:
    groups = json.loads(header["adapters"])
    groups[0]["config"].update(changes)
    header["adapters"] = json.dumps(groups)


def drop_group_key(header: dict, key: str) -> None:
    groups = json.loads(header["adapters"])
    del groups[0][key]
    header["adapters"] = json.dumps(groups)


HEADER_CASES = {
    "adapters not JSON": lambda h: h.update(adapters="[{not json"),
    "adapters not a list": lambda h: h.update(adapters='{"config": {}}'),
    "adapters empty": lambda h: h.update(adapters="[]"),
    "adapters missing": lambda h: h.pop("adapters"),
    "config missing": lambda h: drop_group_key(h, "config"),
    "modules missing": lambda h: drop_group_key(h, "modules"),
    "modules not names": lambda h: h.update(adapters=h["adapters"].replace('"modules": [', '"modules": [5, ')),
    "metadata not JSON": lambda h: h.update(metadata="{'base_model': 'tiny'"),
    "metadata not an object": lambda h: h.update(metadata="[1, 2]"),
    "step not a number": lambda h: h.update(step="five"),
    "rank 0": lambda h: set_config(h, rank=0),
    "unknown variant": lambda h: set_config(h, variant="lokr"),
    "unknown option": lambda h: set_config(h, rnak=4),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_a_broken_header_is_one_line_naming_the_file(case, tiny_adapter, tmp_path, capsys):
    path = rewrite_header(tiny_adapter, tmp_path / "broken.safetensors", HEADER_CASES[case])
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["export", "--adapter", str(path), "--format", "peft", "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("dreamlr export: error: ") and "\n" not in err and "Traceback" not in err
    assert str(path) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_non_finite_adapter_is_refused_by_generate_and_export(tiny_adapter, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of {token} {class}\n")
    tensors = load_file(tiny_adapter)
    key = sorted(tensors)[3]
    tensors[key][0, 0] = float("nan")
    with safe_open(tiny_adapter, framework="pt") as handle:
        header = handle.metadata()
    path = tmp_path / "nan.safetensors"
    save_file(tensors, path, metadata=header)
    commands = [["export", "--adapter", str(path), "--format", "peft", "--output", str(tmp_path / "out")],
                ["generate", "--model", "tiny", "--adapter", str(path), "--prompts", str(prompts), "--class-name",
                 "mug", "--num-images", "1", "--steps", "1", "--resolution", "32",
                 "--output-dir", str(tmp_path / "gen")]]
    for command in commands:
        code = main(command)
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert "\n" not in err and str(path) in err and repr(key) in err and "NaN" in err
        assert not (tmp_path / "out").exists() and not (tmp_path / "gen").exists()
