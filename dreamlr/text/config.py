"""The text-task run configuration: YAML file + flags + `--set key=value`, validated before any work."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dreamlr.adapters import AdapterConfig
from dreamlr.errors import UserError
from dreamlr.training import LR_SCHEDULERS

TASKS = ("classification", "causal-lm")
# task -> default (text column, text-pair column, label column); for causal-lm: instruction, input, response
DEFAULT_COLUMNS = {
    "classification": ("sentence", None, "label"),
    "causal-lm": ("instruction", "input", "response"),
}
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
DEFAULT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass
class TextTrainConfig:
    """Every setting of a text run. Columns left null take the task's defaults (DEFAULT_COLUMNS);
    `labels` left null is the training file's labels, sorted. `adapter` is an AdapterConfig dict."""

    model: str = "minilm"
    task: str = "classification"
    train_file: str = ""
    eval_file: str | None = None
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None
    labels: list[str] | None = None
    prompt_template: str = DEFAULT_TEMPLATE
    output_dir: str = "runs/text"
    adapter: dict[str, Any] = field(default_factory=lambda: {"variant": "lora", "rank": 8, "targets": "all-linear"})
    epochs: int = 3
    max_train_steps: int | None = None
    learning_rate: float = 5e-4
    head_learning_rate: float | None = None
    batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    group_by_length: bool = False
    max_new_tokens: int = 32
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    lr_scheduler: str = "linear"
    lr_warmup_steps: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    weight_decay: float = 0.0
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None

    @classmethod
    def from_sources(cls, config_file: str | None = None, overrides: dict[str, Any] | None = None) -> TextTrainConfig:
        """Defaults < YAML file < overrides (dotted keys reach into `adapter`); columns resolved; validated."""
        data: dict[str, Any] = read_yaml(config_file) if config_file else {}
        for key, value in (overrides or {}).items():
            head, _, rest = key.partition(".")
            if rest:
                if not isinstance(data.setdefault(head, {}), dict):
                    raise UserError(f"--set {key}: {head!r} is not a mapping")
                data[head][rest] = value
            else:
                data[key] = value
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"unknown config key(s) {', '.join(unknown)}; see `dreamlr text train --help`")
        if "adapter" in data:
            if not isinstance(data["adapter"], dict):
                raise UserError(f"config key 'adapter' must be a mapping, got {data['adapter']!r}")
            data["adapter"] = {**cls().adapter, **data["adapter"]}
        if isinstance(data.get("labels"), list):
            data["labels"] = [str(label) for label in data["labels"]]
        config = cls(**data)
        config.validate()
        for name, default in zip(("text_column", "text_pair_column", "label_column"), DEFAULT_COLUMNS[config.task]):
            if getattr(config, name) is None:
                setattr(config, name, default)
        return config

    def validate(self) -> None:
        """Types and ranges of every key, and the adapter config; raises UserError on the first problem."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        if self.task not in TASKS:
            raise UserError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        for key in ("epochs", "batch_size", "eval_batch_size", "max_length", "max_new_tokens", "checkpointing_steps",
                    "max_train_steps", "max_train_samples", "max_eval_samples", "checkpoints_total_limit"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"{key} must be at least 1, got {value}")
        if self.learning_rate <= 0 or (self.head_learning_rate is not None and self.head_learning_rate <= 0):
            raise UserError("learning rates must be positive")
        if self.lr_warmup_steps < 0:
            raise UserError(f"lr_warmup_steps must be 0 or more, got {self.lr_warmup_steps}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise UserError(f"unknown lr_scheduler {self.lr_scheduler!r}; choose one of {', '.join(LR_SCHEDULERS)}")
        if self.labels is not None and (len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)):
            raise UserError(f"labels must be at least two distinct names, got {self.labels}")
        try:
            self.prompt_template.format(instruction="")
        except (KeyError, IndexError, ValueError):
            raise UserError("prompt_template may hold only the placeholder {instruction} "
                            "(write other braces as {{ and }})") from None
        self.adapter_config(1)

    def adapter_config(self, total_steps: int) -> AdapterConfig:
        """The adapter of this run, its ramps sized to `total_steps`."""
        return AdapterConfig.from_dict({"total_steps": total_steps, **self.adapter})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The keys of a YAML config file."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"config file '{path}' is not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys to values")
    return data


def parse_set(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs from --set, values read as YAML (numbers, booleans, null, lists); `5e-5` is a number
    too (YAML 1.1 alone reads it as text)."""
    result = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set learning_rate=5e-5")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML") from None
        result[key.strip()] = float(value) if isinstance(value, str) and _NUMBER.fullmatch(value.strip()) else value
    return result


def _check_type(name: str, value: Any, hint: Any) -> None:
    """Check a value against a field's type hint (str, int, float, bool, dict, list[str], unions with None)."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None):
            if value is None:
                return
            continue
        origin = typing.get_origin(option) or option
        if isinstance(value, bool) and origin is not bool:
            continue
        if origin is float and isinstance(value, (int, float)):
            return
        if origin is list and isinstance(value, list):
            if all(isinstance(item, typing.get_args(option)[0]) for item in value):
                return
        elif isinstance(value, origin):
            return
    names = " or ".join(getattr(o, "__name__", str(o)).replace("NoneType", "null") for o in options)
    raise UserError(f"config key {name!r} must be {names}, got {value!r}")
