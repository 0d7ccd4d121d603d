"""The variant registry: every variant class describes itself, and VARIANTS, config checks, the CLI and
compare read the classes."""

from __future__ import annotations

import dataclasses

import pytest

from dreamlr.adapters import LAYER_CLASSES, VARIANTS, AdapterConfig, AdapterConfigError
from dreamlr.cli import build_parser
from dreamlr.commands.compare import ALL_VARIANTS

SHARED = {"variant", "rank", "alpha", "targets", "lora_dropout", "total_steps"}


def test_variants_come_from_the_layer_classes_in_order():
    assert VARIANTS == tuple(LAYER_CLASSES) == ("lora", "loraplus", "dora", "singlora", "dual_lora", "d2lora", "loha")
    assert all(cls.name == name for name, cls in LAYER_CLASSES.items())
    assert ALL_VARIANTS == ",".join(VARIANTS)


def test_every_config_field_is_shared_or_a_variants_declared_option():
    declared = [option for cls in LAYER_CLASSES.values() for option in cls.options]
    assert len(declared) == len(set(declared))  # each option belongs to one variant
    assert set(declared) | SHARED == {field.name for field in dataclasses.fields(AdapterConfig)}


@pytest.mark.parametrize("options,match", [
    ({"variant": "lora", "tau": -1.0}, "tau must be 0 or more"),  # another variant's option is still checked
    ({"variant": "loha", "lr_ratio": 0}, "lr_ratio must be positive"),
    ({"variant": "d2lora", "ramp_steps": 0}, "ramp_steps must be a positive integer or null"),
    ({"variant": "dual_lora", "rank": 4, "magnitude_rank": 2}, "give both magnitude_rank and direction_rank"),
])
def test_each_class_checks_its_own_options(options, match):
    with pytest.raises(AdapterConfigError, match=match):
        AdapterConfig(**options)
    AdapterConfig(variant="lora", magnitude_rank=0)  # rules of one variant alone apply to it alone


def test_rank_rules():
    dual = AdapterConfig(variant="dual_lora", rank=6)
    assert LAYER_CLASSES["dual_lora"].ranks(dual) == (3, 3) and LAYER_CLASSES["dual_lora"].rank_step(dual) == 2
    assert LAYER_CLASSES["dual_lora"].rank_step(dual.replace(magnitude_rank=1, direction_rank=5)) == 1
    config = AdapterConfig(rank=4)
    matched = {name: cls.matched_rank(config.replace(variant=name), 20, 12) for name, cls in LAYER_CLASSES.items()}
    assert matched == {"lora": 4, "loraplus": 4, "dora": 4, "singlora": 2, "dual_lora": 4, "d2lora": 8, "loha": 8}


@pytest.mark.parametrize("command", [["train"], ["text", "train"]])
def test_variant_help_lists_every_variant(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([*command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "dual_lora (warmup_steps, ste, magnitude_rank, direction_rank, init_std)" in help_text
    assert all(name in help_text for name in VARIANTS)
    assert "d2lora (tau, projection, residual_after_projection) or loha" in help_text
