"""Run configs from YAML and --set: numbers as people write them, one clear error per bad value."""

import pytest

from dreamlr.cli import main
from dreamlr.config_files import load_yaml, parse_set
from dreamlr.diffusion.config import DreamBoothConfig
from dreamlr.errors import UserError
from dreamlr.text.config import TextTrainConfig


@pytest.mark.parametrize("text, value", [
    ("1e-4", 1e-4), ("5E+3", 5e3), ("-2e-5", -2e-5), ("1.0e-4", 1e-4), ("3.", 3.0), (".5", 0.5), ("7", 7),
    ("true", True), ("null", None), ("[1, 2e-3]", [1, 2e-3]),
    ("e5", "e5"), ("1.2.3", "1.2.3"), ("1e", "1e"), ("v1e5", "v1e5"),
])
def test_yaml_values_read_scientific_floats_without_a_dot(text, value):
    assert load_yaml(text) == value and type(load_yaml(text)) is type(value)


def test_set_values_and_errors():
    assert parse_set(["learning_rate=5e-5", "adapter.rank=4", "validation_prompt=a sks dog, oil painting", "seed="]) == {
        "learning_rate": 5e-5, "adapter.rank": 4, "validation_prompt": "a sks dog, oil painting", "seed": None}
    with pytest.raises(UserError, match="expected key=value"):
        parse_set(["learning_rate"])
    with pytest.raises(UserError, match="not valid YAML"):
        parse_set(["targets=[q, k"])


def test_both_trainers_take_scientific_learning_rates_from_files_and_flags(tmp_path):
    image = tmp_path / "image.yaml"
    image.write_text("instance_data_dir: photos\ninstance_prompt: a photo of sks dog\nlearning_rate: 2e-4\n")
    assert DreamBoothConfig.from_sources(str(image)).learning_rate == 2e-4
    assert DreamBoothConfig.from_sources(str(image), parse_set(["learning_rate=5e-5"])).learning_rate == 5e-5
    text = tmp_path / "text.yaml"
    text.write_text("extends: base.yaml\nlearning_rate: 3e-4\n")
    (tmp_path / "base.yaml").write_text("model: minilm\nepochs: 5\n")
    config = TextTrainConfig.from_sources(str(text), parse_set(["adapter.alpha=16"]))
    assert (config.learning_rate, config.epochs, config.adapter["alpha"]) == (3e-4, 5, 16)


@pytest.mark.parametrize("overrides, message", [
    ({"learning_rate": "fast"}, "config key 'learning_rate' must be float, got 'fast'"),
    ({"seed": True}, "config key 'seed' must be int, got True"),
    ({"max_train_steps": 1.5}, "config key 'max_train_steps' must be int"),
    ({"adapter": 3}, "config key 'adapter' must be a mapping"),
    ({"learning_rate": 1e-4, "learning_rate.x": 1}, "--set learning_rate.x: 'learning_rate' is not a mapping"),
    ({"no_such_key": 1}, "unknown config key 'no_such_key'; `dreamlr train --list-keys` lists the known keys"),
    ({"lerning_rate": 1, "sed": 2}, "unknown config keys 'lerning_rate', 'sed' (did you mean 'learning_rate'?)"),
    ({"learning_rate": float("inf")}, "config key 'learning_rate' must be a finite number, got inf"),
])
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(UserError) as error:
        DreamBoothConfig.from_sources(None, {"instance_data_dir": "x", "instance_prompt": "a sks", **overrides})
    assert message in str(error.value)


@pytest.mark.parametrize("word", ["no", "No", "NO", "yes", "on", "off", "y", "n", "Off"])
def test_yaml_1_1_boolean_words_are_words(word):
    assert load_yaml(word) == word and parse_set([f"class_prompt={word}"]) == {"class_prompt": word}


def test_mixed_precision_no_as_documented_in_yaml_and_set(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("instance_data_dir: photos\ninstance_prompt: a photo of sks dog\nmixed_precision: no\n"
                    "center_crop: off\nrandom_flip: yes\nvalidation_prompt: on\nadapter:\n  variant: d2lora\n"
                    "  residual_after_projection: no\n")
    config = DreamBoothConfig.from_sources(str(file))
    assert (config.mixed_precision, config.center_crop, config.random_flip, config.validation_prompt) == (
        "no", False, True, "on")
    assert config.unet_adapter_config().residual_after_projection is False
    overridden = DreamBoothConfig.from_sources(str(file), parse_set(["mixed_precision=no", "instance_prompt=yes",
                                                                      "train_text_encoder=on"]))
    assert (overridden.mixed_precision, overridden.instance_prompt, overridden.train_text_encoder) == (
        "no", "yes", True)
    text = TextTrainConfig.from_sources(None, parse_set(["labels=[no, yes]", "output_dir=off"]))
    assert (text.labels, text.output_dir) == (["no", "yes"], "off")


@pytest.mark.parametrize("command, keys", [
    (["train"], ["learning_rate", "weight_decay", "mixed_precision", "adapter.rank", "adapter.tau"]),
    (["text", "train"], ["learning_rate", "weight_decay", "adapter.targets", "labels"]),
])
def test_list_keys_prints_every_key_with_type_and_default(command, keys, capsys):
    assert main([*command, "--list-keys"]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert lines[0].split() == ["key", "type", "default"] and set(keys) <= set(table)
    assert table["learning_rate"][0] == "float" and table["adapter.rank"] == ["int", "8"]
    if command == ["train"]:
        assert table["mixed_precision"] == ["str", "no"] and table["weight_decay"] == ["float", "0.01"]


@pytest.mark.parametrize("config_class, old, new, value", [
    ("DreamBoothConfig", "adam_weight_decay", "weight_decay", 0.3),
    ("TextTrainConfig", "batch_size", "train_batch_size", 4),
])
def test_old_key_names_still_work_with_a_note(config_class, old, new, value, tmp_path, capsys):
    """One release of aliases: the old name sets the new key and says so on stderr; the shared keys have one
    default in both trainers."""
    from dreamlr.diffusion.config import DreamBoothConfig
    from dreamlr.text.config import TextTrainConfig

    cls = {"DreamBoothConfig": DreamBoothConfig, "TextTrainConfig": TextTrainConfig}[config_class]
    required = {"instance_data_dir": str(tmp_path), "instance_prompt": "p"} if cls is DreamBoothConfig else {}
    config = cls.from_sources(None, {old: value, **required})
    assert getattr(config, new) == value and old not in config.to_dict()
    assert f"note: config key '{old}' is now '{new}'" in capsys.readouterr().err
    shared = ("optimizer", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm", "seed",
              "gradient_accumulation_steps", "mixed_precision", "lr_warmup_steps", "checkpoints_total_limit")
    assert {k: getattr(DreamBoothConfig(), k) for k in shared} == {k: getattr(TextTrainConfig(), k) for k in shared}
