"""Sequence classification: single sentences or pairs, cross-entropy training, accuracy (and F1 for two labels)."""

from __future__ import annotations

import inspect

import torch
from torch import nn

from dreamlr.text.config import TextTrainConfig
from dreamlr.text.data import (
    TextExample,
    check_labels,
    classification_examples,
    label_set,
    read_rows,
)
from dreamlr.text.models import head_parameter_names, load_classifier


class ClassificationTask:
    """Reads the data (labels fixed by the training file or `labels`), loads the model, batches, scores."""

    def __init__(self, config: TextTrainConfig, *, with_train: bool = True) -> None:
        self.config = config
        self.train_examples = self._read(config.train_file, config.max_train_samples) if with_train else []
        self.labels = label_set(self.train_examples, config.labels, config.train_file) if with_train else config.labels
        self.eval_examples = None
        if config.eval_file:
            self.eval_examples = self._read(config.eval_file, config.max_eval_samples)
            if self.labels is not None:
                check_labels(self.eval_examples, self.labels, config.eval_file)
        self.tokenizer = None
        self._inputs: set[str] = set()  # the model's forward arguments: tokenizer outputs it lacks are dropped
        self._encoded: list[dict] = []

    def _read(self, source: str, limit: int | None) -> list[TextExample]:
        config = self.config
        rows = read_rows(source, limit)
        return classification_examples(rows, source, config.text_column, config.text_pair_column, config.label_column)

    def load_model(self) -> nn.Module:
        """The classifier for this label set; keeps its tokenizer and encodes the training set."""
        model, self.tokenizer = load_classifier(self.config.model, self.labels)
        self._inputs = set(inspect.signature(model.forward).parameters)
        self._encoded = self._encode(self.train_examples)
        return model

    @staticmethod
    def head_names(model: nn.Module) -> list[str]:
        """The classification head's parameters: trained in full, saved beside the adapter."""
        return head_parameter_names(model)

    def metadata(self) -> dict:
        """What the adapter file's header records about the task."""
        return {"task": "classification", "labels": self.labels}

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return len(self.train_examples)

    @property
    def lengths(self) -> list[int]:
        """Tokens per training example."""
        return [len(item["input_ids"]) for item in self._encoded]

    def _encode(self, examples: list[TextExample]) -> list[dict]:
        label_ids = {label: index for index, label in enumerate(self.labels)}
        pairs = [e.pair for e in examples] if self.config.text_pair_column else None
        encoded = self.tokenizer([e.text for e in examples], pairs, truncation=True,
                                 max_length=self.config.max_length) if examples else {"input_ids": []}
        keys = [key for key in encoded.keys() if key in self._inputs]
        return [{**{k: encoded[k][i] for k in keys}, "labels": label_ids[e.label]} for i, e in enumerate(examples)]

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Padded tensors (with `labels`) of the given training examples."""
        return self._collate([self._encoded[i] for i in indices])

    def _collate(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad(items, return_tensors="pt")

    @staticmethod
    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    @torch.no_grad()
    def evaluate(self, model: nn.Module, examples: list[TextExample]) -> dict:
        """accuracy, f1 of the second label when there are two, and the example count."""
        encoded = self._encode(examples)
        order = sorted(range(len(encoded)), key=lambda index: len(encoded[index]["input_ids"]))  # less padding
        device = next(model.parameters()).device
        predicted = torch.empty(len(encoded), dtype=torch.long)
        size = self.config.eval_batch_size
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            batch = self._collate([encoded[index] for index in rows])
            batch.pop("labels")
            predicted[rows] = model(**{k: v.to(device) for k, v in batch.items()}).logits.argmax(-1).cpu()
        target = torch.tensor([item["labels"] for item in encoded])
        metrics = {"accuracy": int((predicted == target).sum()) / len(target), "num_examples": len(target)}
        if len(self.labels) == 2:
            metrics["f1"] = binary_f1(predicted, target)
        return metrics


def binary_f1(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """F1 of class 1 (0 when it is never predicted nor present)."""
    true_pos = int(((predicted == 1) & (target == 1)).sum())
    denominator = int((predicted == 1).sum()) + int((target == 1).sum())
    return 2 * true_pos / denominator if denominator else 0.0
