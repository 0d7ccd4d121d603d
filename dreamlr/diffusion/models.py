"""Stable Diffusion model loading: hub id, local diffusers folder, single-file checkpoint, or `tiny`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dreamlr.errors import UserError
from dreamlr.hub import hub_offline, looks_like_path

TINY = "tiny"
WORLD = "world"  # the world model dreamlr builds itself (dreamlr.world)
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_UNSUPPORTED = ("model '{source}' is Stable Diffusion XL, which dreamlr does not support yet; use a "
                    "Stable Diffusion 1.x/2.x model (a hub id, diffusers folder or checkpoint) or `tiny`")
SDXL_CHECKPOINT_PREFIXES = ("conditioner.embedders.1.", "text_encoder_2.")

_TINY_SEED = 1234
_TINY_WORDS = (
    "a an the of in on at with and photo picture painting portrait style sks dog cat person man woman"
    " toy backpack car house beach forest city snow red blue green black white"
).split()
_SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


@dataclass
class Components:
    """The parts of a Stable Diffusion model, as the trainer needs them."""

    source: str
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler: SchedulerMixin  # the sampling scheduler the model came with
    noise_scheduler: DDPMScheduler  # the training scheduler, same noise schedule


def tiny_resolution() -> int:
    """Native image size (pixels, square) of the built-in `tiny` model."""
    return 64


def load_components(source: str, dtype: torch.dtype = torch.float32) -> Components:
    """Load (or, for `tiny`, build) a Stable Diffusion model's parts from any supported source."""
    if source == TINY:
        pipe = _tiny_pipeline()
    elif source == WORLD:  # built-in: the world model's folder (assets/world/model or $DREAMLR_WORLD_DIR/model)
        from dreamlr.world.assets import world_part

        pipe = _load_external(str(world_part("model")), dtype)
    else:
        pipe = _load_external(source, dtype)
    if pipe.unet.config.get("addition_embed_type") == "text_time":  # SDXL that no file check caught
        raise UserError(SDXL_UNSUPPORTED.format(source=source))
    for model in (pipe.unet, pipe.vae, pipe.text_encoder):
        if model.dtype != dtype:  # only `tiny`: loaders already gave `dtype`
            model.to(dtype)
        model.eval()
    return Components(
        source=source,
        tokenizer=pipe.tokenizer,
        text_encoder=pipe.text_encoder,
        vae=pipe.vae,
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config),
    )


def pipeline_from_components(parts: Components) -> StableDiffusionPipeline:
    """A text-to-image pipeline over the given parts (shared, not copied), without a safety checker."""
    return StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=parts.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def load_pipeline(
    source: str,
    adapter: str | os.PathLike | None = None,
    merge: bool = False,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> StableDiffusionPipeline:
    """A text-to-image pipeline for `source`, with a dreamlr adapter file attached (or merged) if given."""
    pipe = pipeline_from_components(load_components(source, dtype))
    if adapter is not None:
        from dreamlr.adapters import load_adapter
        from dreamlr.adapters import merge as merge_adapters

        model = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
        load_adapter(model, adapter)
        if merge:
            merge_adapters(model)
    pipe.set_progress_bar_config(disable=None)  # tqdm: quiet when not a TTY
    return pipe.to(device) if device is not None else pipe


def _load_external(source: str, dtype: torch.dtype) -> StableDiffusionPipeline:
    """Load a pipeline from a local folder, a single-file checkpoint or the hub."""
    refuse_sdxl(source)
    path = Path(source).expanduser()
    no_safety = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise UserError(f"model '{source}': folder has no model_index.json, so it is not a diffusers model folder")
        missing = [p for p in PIPELINE_PARTS if p not in json.loads(index.read_text())]
        if missing:
            raise UserError(f"model '{source}': not a Stable Diffusion pipeline (no {', '.join(missing)})")
        return _guarded(source, lambda: StableDiffusionPipeline.from_pretrained(path, dtype=dtype, **no_safety))
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise UserError(f"model '{source}': a model file must be .safetensors or .ckpt")
        return _guarded(
            source,
            lambda: StableDiffusionPipeline.from_single_file(
                str(path), dtype=dtype, local_files_only=hub_offline(), **no_safety
            ),
            offline_reason="a single-file checkpoint needs its base model's configs from the hub, which are not "
            "cached, and the hub is offline; use a diffusers folder or `tiny`",
        )
    if looks_like_path(source, CHECKPOINT_SUFFIXES):
        raise UserError(f"model '{source}': no such file or folder")
    if hub_offline() and not isinstance(try_to_load_from_cache(source, "model_index.json"), str):
        raise UserError(f"model '{source}' not found locally, and the hub is offline; give a local path or `tiny`")
    return _guarded(
        source,
        lambda: StableDiffusionPipeline.from_pretrained(source, dtype=dtype, **no_safety),
        offline_reason="not fully cached, and the hub is offline; give a local path or `tiny`",
    )


def refuse_sdxl(source: str) -> None:
    """A UserError when `source` is an SDXL model (a diffusers folder, local or cached from the hub, or a
    single .safetensors file), read from its configs or key names before any weights load: SDXL is not
    supported yet, and training and sampling would fail at the first step."""
    path = Path(source).expanduser()
    if source == TINY:
        return
    if path.is_file():
        if path.suffix.lower() == ".safetensors" and _single_file_is_sdxl(path):
            raise UserError(SDXL_UNSUPPORTED.format(source=source))
        return
    if not path.is_dir() and not looks_like_path(source, CHECKPOINT_SUFFIXES):
        try:
            cached = try_to_load_from_cache(source, "model_index.json")
        except Exception:  # noqa: BLE001 - not a valid hub id: the loader reports it
            return
        path = Path(cached).parent if isinstance(cached, str) else path
    if path.is_dir():
        _refuse_sdxl_folder(source, path)


def _refuse_sdxl_folder(source: str, folder: Path) -> None:
    try:
        index = json.loads((folder / "model_index.json").read_text())
        unet = folder / "unet" / "config.json"
        unet_config = json.loads(unet.read_text()) if unet.is_file() else {}
    except (OSError, ValueError):
        return  # the loader reports an unreadable folder
    if not isinstance(index, dict) or not isinstance(unet_config, dict):
        return
    if ("XL" in str(index.get("_class_name", "")) or "text_encoder_2" in index
            or unet_config.get("addition_embed_type") == "text_time"):
        raise UserError(SDXL_UNSUPPORTED.format(source=source))


def _single_file_is_sdxl(path: Path) -> bool:
    """Whether a single-file .safetensors checkpoint holds SDXL's second text encoder (its key names)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return any(key.startswith(SDXL_CHECKPOINT_PREFIXES) for key in handle.keys())
    except Exception:  # noqa: BLE001 - not readable here: the loader reports it
        return False


def _guarded(
    source: str, load: Callable[[], StableDiffusionPipeline], offline_reason: str = ""
) -> StableDiffusionPipeline:
    """Run a diffusers loader, turning its failures into one-line UserErrors."""
    try:
        return load()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        if offline_reason and isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            raise UserError(f"model '{source}': {offline_reason}") from e
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model '{source}': cannot be loaded as a Stable Diffusion model ({reason})") from e


def _tiny_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer built in memory: every byte is a token, plus whole-word merges for common words."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for word in _TINY_WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        merged = symbols[0]
        for symbol in symbols[1:]:
            merges.append((merged, symbol))
            merged += symbol
            tokens.append(merged)
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=77)


def _tiny_pipeline() -> StableDiffusionPipeline:
    """A small, randomly initialised SD 1.x-shaped pipeline; identical weights on every call."""
    tokenizer = _tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        unet = UNet2DConditionModel(
            sample_size=tiny_resolution() // 8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 32),
            norm_num_groups=8,
            layers_per_block=1,
            sample_size=tiny_resolution(),
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=tokenizer.model_max_length,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**_SD_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
