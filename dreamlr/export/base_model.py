"""The base model an adapter belongs to, loaded in its stored dtype: Stable Diffusion or a transformers model."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dreamlr.errors import UserError
from dreamlr.export.naming import CLIP_PREFIX
from dreamlr.fileio import write_safetensors

# tasks (dreamlr's, or PEFT's task_type) and the transformers classes they load
TASK_CLASSES = {"classification": "AutoModelForSequenceClassification", "causal-lm": "AutoModelForCausalLM",
                "SEQ_CLS": "AutoModelForSequenceClassification", "CAUSAL_LM": "AutoModelForCausalLM"}

_FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


@dataclass
class BaseModel:
    """A loaded base model: `model` is what adapter module names are relative to."""

    source: str
    model: nn.Module
    dtype: torch.dtype
    kind: str  # "diffusers" or "transformers": the folder `save` writes
    save: Callable[[Path], None]  # the whole model, as `save_pretrained` writes it
    head: list[str] = field(default_factory=list)  # trained task-head parameters loaded beside the adapter
    pipeline: Any = None  # a Stable Diffusion base's whole pipeline (what `model` holds parts of)


def load_base(source: str, diffusion: bool, metadata: dict[str, Any] | None = None) -> BaseModel:
    """A Stable Diffusion pipeline (model: ModuleDict of unet, text_encoder and SDXL's text_encoder_2) or a
    transformers model
    (the class from the adapter `metadata`'s task, e.g. {"task": "classification", "labels": […]})."""
    return _load_diffusion(source) if diffusion else _load_transformers(source, metadata or {})


def _load_diffusion(source: str) -> BaseModel:
    from dreamlr.diffusion.models import TINY, TINY_SDXL, adapter_modules, load_pipeline

    dtype = torch.float32 if source in (TINY, TINY_SDXL) else _stored_diffusion_dtype(source)
    pipe = load_pipeline(source, dtype=dtype)
    model = adapter_modules(pipe)

    def save(folder: Path) -> None:
        pipe.save_pretrained(folder)
        _nest_clip_keys(pipe.text_encoder, folder / "text_encoder")

    return BaseModel(source, model, dtype, "diffusers", save, pipeline=pipe)


def _nest_clip_keys(text_encoder: nn.Module, folder: Path) -> None:
    """Rewrite a CLIPTextModel that transformers 5 saved flat (`encoder.…`) in the `text_model.…` layout:
    transformers 4.x (sd-scripts' pin) reads only that one and would start from random weights, and 5 reads both."""
    from safetensors import safe_open

    if type(text_encoder).__name__ != "CLIPTextModel" or hasattr(text_encoder, "text_model"):
        return  # transformers 4.x already saves text_model.…
    for file in folder.glob("*.safetensors"):
        with safe_open(file, framework="pt") as handle:
            tensors = {CLIP_PREFIX + key: handle.get_tensor(key) for key in handle.keys()}
            metadata = handle.metadata()
        write_safetensors(file, tensors, metadata)
    for index_file in folder.glob("*.safetensors.index.json"):  # a sharded text encoder
        index = json.loads(index_file.read_text(encoding="utf-8"))
        index["weight_map"] = {CLIP_PREFIX + key: shard for key, shard in index["weight_map"].items()}
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _stored_diffusion_dtype(source: str) -> torch.dtype:
    """The dtype of the UNet weights as stored (float32 where that cannot be read without loading)."""
    path = Path(source).expanduser()
    if path.is_dir():
        candidates = sorted((path / "unet").glob("diffusion_pytorch_model*.safetensors"), key=lambda p: len(p.name))
        return _first_dtype(candidates[0]) if candidates else torch.float32
    if path.suffix.lower() == ".safetensors" and path.is_file():
        return _first_dtype(path, prefix="model.diffusion_model.")
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(source, "unet/diffusion_pytorch_model.safetensors")
    except HFValidationError:  # not a hub id either: loading the pipeline says so
        return torch.float32
    return _first_dtype(Path(cached)) if isinstance(cached, str) else torch.float32


def _first_dtype(path: Path, prefix: str = "") -> torch.dtype:
    """dtype of the first floating-point tensor (whose key starts with `prefix`) in a .safetensors file."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        for key in handle.keys():
            dtype = _FLOAT_DTYPES.get(handle.get_slice(key).get_dtype()) if key.startswith(prefix) else None
            if dtype is not None:
                return dtype
    return torch.float32


def _load_transformers(source: str, metadata: dict[str, Any]) -> BaseModel:
    """dreamlr's text tasks load as `dreamlr text` does (labels, padding token); other models by the
    class the adapter's PEFT task or the model's config names. fp32; `dtype` is the stored one."""
    from dreamlr.text import models as text_models

    task = metadata.get("task")
    if task == "classification" and metadata.get("labels"):
        model, tokenizer = text_models.load_classifier(source, [str(label) for label in metadata["labels"]])
    elif task == "causal-lm":
        model, tokenizer = text_models.load_causal_lm(source)
    else:
        model, tokenizer = _load_by_class(source, TASK_CLASSES.get(task or ""))
    dtype = _stored_text_dtype(text_models.resolve_model(source))

    def save(folder: Path) -> None:
        model.to(dtype).save_pretrained(folder)  # one cast of the fp32 merge
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)

    return BaseModel(source, model.eval(), dtype, "transformers", save)


def _load_by_class(source: str, class_name: str | None) -> tuple[nn.Module, Any]:
    """A transformers model of `class_name` (default: the first architecture its config names), and its
    tokenizer when it has one."""
    import transformers

    from dreamlr.text.models import resolve_model

    path = resolve_model(source)
    try:
        config = transformers.AutoConfig.from_pretrained(path)
        architecture = (config.architectures or [""])[0]
        name = class_name or (architecture if hasattr(transformers, architecture) else "AutoModel")
        model = getattr(transformers, name).from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model '{source}': cannot be loaded as a transformers model ({reason})") from None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError):  # a model folder without tokenizer files
        tokenizer = None
    return model, tokenizer


def _stored_text_dtype(location: str) -> torch.dtype:
    """The dtype a transformers model folder (or cached hub id) records in config.json, else its first
    weights file's; float32 when neither says."""
    folder = Path(location)
    if not folder.is_dir():
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(location, "config.json")
        if not isinstance(cached, str):
            return torch.float32
        folder = Path(cached).parent
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    name = config.get("dtype") or config.get("torch_dtype")
    if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    weights = sorted(folder.glob("*.safetensors"))
    return _first_dtype(weights[0]) if weights else torch.float32
