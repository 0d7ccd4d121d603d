"""The text-task run configuration: YAML file + flags + `--set key=value`, validated before any work."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


from dreamlr.adapters import AdapterConfig
from dreamlr.config_files import build_config, check_output_dir, check_types
from dreamlr.errors import UserError
from dreamlr.training.config import TrainingKeys

TASKS = ("classification", "causal-lm")
# task -> default (text column, text-pair column, label column); for causal-lm: instruction, input, response
DEFAULT_COLUMNS = {
    "classification": ("sentence", None, "label"),
    "causal-lm": ("instruction", "input", "response"),
}
DEFAULT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"


@dataclass
class TextTrainConfig(TrainingKeys):
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
    train_batch_size: int = 32
    eval_batch_size: int = 64
    max_length: int = 128
    group_by_length: bool = False
    max_new_tokens: int = 32
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    lr_scheduler: str = "linear"
    checkpointing_steps: int = 500

    @classmethod
    def from_sources(cls, config_file: str | None = None, overrides: dict[str, Any] | None = None) -> TextTrainConfig:
        """Defaults < YAML file < overrides (dotted keys reach into `adapter`); columns resolved; validated."""
        data = build_config(cls, config_file, overrides, "dreamlr text train")
        if isinstance(data.get("labels"), list):
            data["labels"] = [str(label).lower() if isinstance(label, bool) else str(label) for label in data["labels"]]
        config = cls(**data)
        config.validate()
        for name, default in zip(("text_column", "text_pair_column", "label_column"), DEFAULT_COLUMNS[config.task]):
            if getattr(config, name) is None:
                setattr(config, name, default)
        return config

    def validate(self) -> None:
        """Types and ranges of every key, and the adapter config; raises UserError on the first problem."""
        check_types(self)
        if self.task not in TASKS:
            raise UserError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        for key in ("epochs", "eval_batch_size", "max_length", "max_new_tokens", "max_train_steps", "max_train_samples",
                    "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise UserError(f"{key} must be at least 1, got {value}")
        if self.head_learning_rate is not None and self.head_learning_rate <= 0:
            raise UserError("learning rates must be positive")
        self.check_training_keys()
        check_output_dir(self.output_dir)
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
