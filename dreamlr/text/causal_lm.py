"""Causal LM: instruction/response training with the loss on response tokens only; evaluation by greedy
generation with exact match, or multiple choice by the answers' log-likelihood.

The prompt is `prompt_template` with `{instruction}` = the instruction, plus a blank line and the input
when there is one. The response follows it, tokenized on its own and ended by the EOS token. Prompts
longer than `max_length` lose tokens from the left, responses from the right.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dreamlr.text.config import TextTrainConfig
from dreamlr.text.data import (
    ChoiceExample,
    InstructionExample,
    choice_examples,
    instruction_examples,
    is_multiple_choice,
    read_rows,
)
from dreamlr.text.models import load_causal_lm

IGNORE = -100


class CausalLMTask:
    """Reads instruction/response or multiple-choice data, loads the LM, batches, scores."""

    def __init__(self, config: TextTrainConfig, *, with_train: bool = True) -> None:
        self.config = config
        self.train_examples: list[InstructionExample] = []
        if with_train:
            examples = self._read(config.train_file, config.max_train_samples)
            self.train_examples = [as_instruction(e) if isinstance(e, ChoiceExample) else e for e in examples]
        self.eval_examples = self._read(config.eval_file, config.max_eval_samples) if config.eval_file else None
        self.tokenizer = None
        self._encoded: list[tuple[list[int], int]] = []

    def _read(self, source: str, limit: int | None) -> list[InstructionExample] | list[ChoiceExample]:
        rows = read_rows(source, limit)
        if is_multiple_choice(rows):
            return choice_examples(rows, source)
        config = self.config
        return instruction_examples(rows, source, config.text_column, config.text_pair_column, config.label_column)

    def load_model(self) -> nn.Module:
        """The language model; keeps its tokenizer and encodes the training set."""
        model, self.tokenizer = load_causal_lm(self.config.model)
        self._encoded = [self._join(self._prompt_ids(e.instruction, e.input), self._response_ids(e.response))
                         for e in self.train_examples]
        return model

    @staticmethod
    def head_names(model: nn.Module) -> list[str]:
        """None: the LM head stays frozen (it is usually tied to the embeddings)."""
        return []

    def metadata(self) -> dict:
        """What the adapter file's header records about the task."""
        return {"task": "causal-lm"}

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return len(self.train_examples)

    @property
    def lengths(self) -> list[int]:
        """Tokens per training example (prompt and response)."""
        return [len(ids) for ids, _ in self._encoded]

    # -- tokens --------------------------------------------------------------------------------
    def _prompt_ids(self, instruction: str, extra: str = "") -> list[int]:
        text = f"{instruction}\n\n{extra}" if extra else instruction
        return self.tokenizer(self.config.prompt_template.format(instruction=text))["input_ids"]

    def _response_ids(self, text: str, end: bool = True) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids + [self.tokenizer.eos_token_id] if end and self.tokenizer.eos_token_id is not None else ids

    def _join(self, prompt: list[int], continuation: list[int]) -> tuple[list[int], int]:
        """prompt + continuation cut to max_length, and where the continuation starts."""
        limit = self.config.max_length
        continuation = continuation[: limit - 1]
        prompt = prompt[len(prompt) - (limit - len(continuation)):] if len(prompt) + len(continuation) > limit else prompt
        return prompt + continuation, len(prompt)

    def _right_padded(self, items: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in items)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        attention = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        for row, (ids, start) in enumerate(items):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
            labels[row, start: len(ids)] = torch.tensor(ids[start:], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    # -- training ------------------------------------------------------------------------------
    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Right-padded ids, attention mask and labels (response tokens only) of the given examples."""
        return self._right_padded([self._encoded[i] for i in indices])

    @staticmethod
    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean next-token cross-entropy over the response tokens of the batch."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                ignore_index=IGNORE, reduction="sum")
        return total / targets.ne(IGNORE).sum().clamp(min=1)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, examples: list[InstructionExample] | list[ChoiceExample]) -> dict:
        """Exact match of greedy generations, or multiple-choice accuracy, by the examples' kind."""
        if examples and isinstance(examples[0], ChoiceExample):
            return self._multiple_choice(model, examples)
        return self._exact_match(model, examples)

    def _exact_match(self, model: nn.Module, examples: list[InstructionExample]) -> dict:
        predictions = self.generate(model, examples)
        hits = sum(normalize(text) == normalize(e.response) for text, e in zip(predictions, examples))
        return {"accuracy": hits / len(examples), "exact_match": hits / len(examples), "num_examples": len(examples)}

    @torch.no_grad()
    def generate(self, model: nn.Module, examples: list[InstructionExample]) -> list[str]:
        """Greedy continuations of the examples' prompts, up to EOS or `max_new_tokens`."""
        from transformers import GenerationConfig

        tokenizer, device = self.tokenizer, next(model.parameters()).device
        settings = GenerationConfig(max_new_tokens=self.config.max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        texts = []
        size = self.config.eval_batch_size
        for start in range(0, len(examples), size):
            prompts = [self._prompt_ids(e.instruction, e.input)[-self.config.max_length:]
                       for e in examples[start:start + size]]
            width = max(map(len, prompts))
            input_ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(prompts), width), dtype=torch.long)
            for row, ids in enumerate(prompts):  # left padding: every row continues at the end
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention[row, width - len(ids):] = 1
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                    generation_config=settings)
            for generated in output[:, width:].tolist():
                if tokenizer.eos_token_id in generated:
                    generated = generated[: generated.index(tokenizer.eos_token_id)]
                texts.append(tokenizer.decode(generated, skip_special_tokens=True))
        return texts

    @torch.no_grad()
    def _multiple_choice(self, model: nn.Module, examples: list[ChoiceExample]) -> dict:
        """Pick the choice of highest summed log-likelihood (`accuracy`) and of highest mean per token."""
        items, owners = [], []
        for index, example in enumerate(examples):
            prompt = self._prompt_ids(example.question)
            for choice in example.choices:
                items.append(self._join(prompt, self._response_ids(choice, end=False)))
                owners.append(index)
        device = next(model.parameters()).device
        sums, means = [], []
        size = self.config.eval_batch_size
        for start in range(0, len(items), size):
            batch = self._right_padded(items[start:start + size])
            logits = model(input_ids=batch["input_ids"].to(device),
                           attention_mask=batch["attention_mask"].to(device)).logits[:, :-1].float()
            targets = batch["labels"][:, 1:].to(device)
            mask = targets.ne(IGNORE)
            log_probs = logits.log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0] * mask
            sums.append(log_probs.sum(-1).cpu())
            means.append((log_probs.sum(-1) / mask.sum(-1).clamp(min=1)).cpu())
        total, per_token = torch.cat(sums), torch.cat(means)
        owner = torch.tensor(owners)
        correct_sum = correct_mean = 0
        for index, example in enumerate(examples):
            rows = (owner == index).nonzero()[:, 0]
            correct_sum += int(total[rows].argmax()) == example.answer
            correct_mean += int(per_token[rows].argmax()) == example.answer
        count = len(examples)
        return {"accuracy": correct_sum / count, "accuracy_per_token": correct_mean / count, "num_examples": count}


def as_instruction(example: ChoiceExample) -> InstructionExample:
    """A multiple-choice record as a training example: the question, answered by the right choice."""
    return InstructionExample(example.question, "", example.choices[example.answer], example.line)


def normalize(text: str) -> str:
    """Exact-match form: surrounding whitespace dropped, inner runs of whitespace made one space."""
    return " ".join(text.split())
