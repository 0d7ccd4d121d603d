"""Stable Diffusion model loading (1.x, 2.x and SDXL): hub id, local diffusers folder, single-file checkpoint,
or the built-in `tiny`, `tiny-sdxl` and `world`. The model kind is read from the model's own files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from dreamlr.errors import UserError
from dreamlr.hub import hub_offline, looks_like_path

T = TypeVar("T")
TINY = "tiny"
TINY_SDXL = "tiny-sdxl"
WORLD = "world"  # the world model dreamlr builds itself (dreamlr.world)
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
PIPELINE_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_PARTS = (*PIPELINE_PARTS, "text_encoder_2", "tokenizer_2")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")  # the adapter-carrying parts besides the UNet

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
_SDXL_SCHEDULE = dict(  # stable-diffusion-xl-base-1.0's scheduler_config.json
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="leading",
    interpolation_type="linear",
    use_karras_sigmas=False,
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
    tokenizer_2: CLIPTokenizer | None = None  # SDXL's second tokenizer and text encoder (OpenCLIP bigG)
    text_encoder_2: CLIPTextModelWithProjection | None = None

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    def text_encoders(self) -> dict[str, nn.Module]:
        """{part name: text encoder}: `text_encoder`, plus `text_encoder_2` for SDXL."""
        return {name: getattr(self, name) for name in TEXT_ENCODERS if getattr(self, name) is not None}


ZERO_SNR_GUIDANCE_RESCALE = 0.7  # Lin et al. 2023, §3.4: the guidance rescale φ they sample with


def zero_snr_schedulers(scheduler_config, source: str) -> tuple[DDPMScheduler, DDIMScheduler]:
    """The model's noise schedule rescaled to zero terminal SNR (Lin et al. 2023, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed"): (training scheduler, DDIM sampler with trailing timesteps, as the
    paper samples). Only for v-prediction models: with epsilon prediction the last step cannot recover the
    image (its x0 estimate divides by √ᾱ_T = 0)."""
    if scheduler_config.get("prediction_type") != "v_prediction":
        raise UserError(f"zero terminal SNR needs a v-prediction model (e.g. Stable Diffusion 2.x at 768 px); "
                        f"model '{source}' predicts {scheduler_config.get('prediction_type', 'epsilon')}")
    return (DDPMScheduler.from_config(scheduler_config, rescale_betas_zero_snr=True),
            DDIMScheduler.from_config(scheduler_config, rescale_betas_zero_snr=True, timestep_spacing="trailing"))


def adapter_modules(pipe) -> nn.ModuleDict:
    """The parts of a pipeline (or Components) that adapters attach to, by the names adapter files use:
    `unet`, `text_encoder`, and `text_encoder_2` for SDXL."""
    parts = {"unet": pipe.unet}
    parts.update({name: getattr(pipe, name) for name in TEXT_ENCODERS if getattr(pipe, name, None) is not None})
    return nn.ModuleDict(parts)


def tiny_resolution() -> int:
    """Native image size (pixels, square) of the built-in `tiny` and `tiny-sdxl` models."""
    return 64


def load_components(source: str, dtype: torch.dtype = torch.float32, vae: str | None = None) -> Components:
    """Load (or, for the built-in tiny models, build) a Stable Diffusion model's parts from any supported
    source; `vae` replaces its VAE with another (a diffusers AutoencoderKL folder or hub id, e.g. SDXL's
    fp16-safe VAE)."""
    if source == TINY:
        pipe = _tiny_pipeline()
    elif source == TINY_SDXL:
        pipe = _tiny_sdxl_pipeline()
    elif source == WORLD:  # built-in: the world model's folder (assets/world/model or $DREAMLR_WORLD_DIR/model)
        from dreamlr.world.assets import world_part

        pipe = _load_external(str(world_part("model")), dtype)
    else:
        pipe = _load_external(source, dtype)
    if vae is not None:
        pipe.vae = load_vae(vae, dtype)
    xl = isinstance(pipe, StableDiffusionXLPipeline)
    if xl != (pipe.unet.config.get("addition_embed_type") == "text_time"):
        raise UserError(f"model '{source}': its UNet does not match its pipeline "
                        f"({type(pipe).__name__} with a{'n SD' if xl else 'n SDXL'} UNet); check the folder")
    for model in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if model is None:
            continue
        if model.dtype != dtype:  # only the built-in tiny models: loaders already gave `dtype`
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
        tokenizer_2=getattr(pipe, "tokenizer_2", None),
        text_encoder_2=getattr(pipe, "text_encoder_2", None),
    )


def pipeline_from_components(parts: Components) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A text-to-image pipeline over the given parts (shared, not copied), without a safety checker or
    watermarker: StableDiffusionXLPipeline for SDXL, else StableDiffusionPipeline."""
    if parts.is_sdxl:
        return StableDiffusionXLPipeline(
            vae=parts.vae, text_encoder=parts.text_encoder, text_encoder_2=parts.text_encoder_2,
            tokenizer=parts.tokenizer, tokenizer_2=parts.tokenizer_2, unet=parts.unet, scheduler=parts.scheduler,
            add_watermarker=False,
        )
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
) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """A text-to-image pipeline for `source` (SD or SDXL, as the model is), with a dreamlr adapter file
    attached (or merged) if given."""
    pipe = pipeline_from_components(load_components(source, dtype))
    if adapter is not None:
        from dreamlr.adapters import load_adapter
        from dreamlr.adapters import merge as merge_adapters

        model = adapter_modules(pipe)
        load_adapter(model, adapter)
        if merge:
            merge_adapters(model)
    pipe.set_progress_bar_config(disable=None)  # tqdm: quiet when not a TTY
    return pipe.to(device) if device is not None else pipe


def _load_external(source: str, dtype: torch.dtype) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """Load a pipeline from a local folder, a single-file checkpoint or the hub; SD or SDXL as its files say."""
    path = Path(source).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise UserError(f"model '{source}': folder has no model_index.json, so it is not a diffusers model folder")
        cls = pipeline_class(source, _read_json(source, index))
        return _guarded(source, lambda: cls.from_pretrained(path, dtype=dtype, **_no_extras(cls)))
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise UserError(f"model '{source}': a model file must be .safetensors or .ckpt")
        from dreamlr.diffusion.single_file import load_single_file

        return load_single_file(path, dtype)
    if looks_like_path(source, CHECKPOINT_SUFFIXES):
        raise UserError(f"model '{source}': no such file or folder")
    cached = try_to_load_from_cache(source, "model_index.json")
    if hub_offline() and not isinstance(cached, str):
        raise UserError(f"model '{source}' not found locally, and the hub is offline; give a local path or `tiny`")
    index = _read_json(source, Path(cached)) if isinstance(cached, str) else \
        _guarded(source, lambda: StableDiffusionPipeline.load_config(source))
    cls = pipeline_class(source, index)
    return _guarded(
        source,
        lambda: cls.from_pretrained(source, dtype=dtype, **_no_extras(cls)),
        offline_reason="not fully cached, and the hub is offline; give a local path or `tiny`",
    )


def load_vae(source: str, dtype: torch.dtype) -> AutoencoderKL:
    """A diffusers AutoencoderKL from a folder (itself, or a pipeline folder's `vae/`) or a hub id."""
    path = Path(source).expanduser()
    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise UserError(f"vae '{source}': no config.json in it or in its vae/ folder; give a diffusers "
                            "AutoencoderKL folder")
        return _guarded(source, lambda: AutoencoderKL.from_pretrained(folder, dtype=dtype), what="vae")
    if looks_like_path(source, CHECKPOINT_SUFFIXES):
        raise UserError(f"vae '{source}': no such folder")
    return _guarded(source, lambda: AutoencoderKL.from_pretrained(source, dtype=dtype), what="vae",
                    offline_reason="not cached, and the hub is offline; give a local folder")


def check_model_source(source: str, zero_snr: bool = False) -> None:
    """A UserError, before any weights load, when a local folder (or a cached hub id) holds a pipeline dreamlr
    cannot use, read from its model_index.json, or (with `zero_snr`) a model that does not predict v, or when a
    checkpoint file's keys are of another kind (SD3, Flux, …); other sources are checked when they load."""
    if source in (TINY, TINY_SDXL):
        if zero_snr:
            zero_snr_schedulers(dict(_SD_SCHEDULE), source)
        return
    path = Path(source).expanduser()
    if path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES:
        from dreamlr.diffusion.single_file import checkpoint_kind

        checkpoint_kind(path)  # reads the header only
        return
    folder = _model_folder(source)
    if folder is None:
        return
    pipeline_class(source, _read_json(source, folder / "model_index.json"))
    scheduler = folder / "scheduler" / "scheduler_config.json"
    if zero_snr and scheduler.is_file():
        zero_snr_schedulers(_read_json(source, scheduler), source)


def _model_folder(source: str) -> Path | None:
    """The diffusers folder of a model: a local folder, the world model's, or a hub id's cache; None if unknown."""
    if source == WORLD:
        from dreamlr.world.assets import world_part

        return world_part("model")
    path = Path(source).expanduser()
    if not path.exists() and not looks_like_path(source, CHECKPOINT_SUFFIXES):
        try:
            cached = try_to_load_from_cache(source, "model_index.json")
        except Exception:  # noqa: BLE001 - not a valid hub id: the loader reports it
            return None
        path = Path(cached).parent if isinstance(cached, str) else path
    return path if (path / "model_index.json").is_file() else None


def pipeline_class(source: str, index: dict) -> type[StableDiffusionPipeline] | type[StableDiffusionXLPipeline]:
    """The pipeline class for a diffusers folder's model_index.json: SDXL when it has a second text encoder.
    A UserError for anything else (SD3, Flux, an SDXL refiner ...), before any weights load."""
    kind = str(index.get("_class_name", "pipeline"))
    present = [part for part in SDXL_PARTS if isinstance(index.get(part), list) and index[part][0] is not None]
    xl = "text_encoder_2" in present or "XL" in kind
    missing = [part for part in (SDXL_PARTS if xl else PIPELINE_PARTS) if part not in present]
    if missing:
        raise UserError(f"model '{source}': not a Stable Diffusion 1.x/2.x or SDXL base pipeline (a {kind} "
                        f"without {', '.join(missing)})")
    return StableDiffusionXLPipeline if xl else StableDiffusionPipeline


def _no_extras(cls: type) -> dict:
    """Loader keywords that leave out the safety checker (SD) or the invisible watermark (SDXL)."""
    if cls is StableDiffusionXLPipeline:
        return {"add_watermarker": False}
    return dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _read_json(source: str, path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"model '{source}': cannot read '{path.name}' ({e})") from e
    if not isinstance(data, dict):
        raise UserError(f"model '{source}': '{path.name}' is not a JSON object")
    return data


def _guarded(source: str, load: Callable[[], T], offline_reason: str = "", what: str = "model") -> T:
    """Run a diffusers loader, turning its failures into one-line UserErrors."""
    try:
        return load()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        if offline_reason and isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            raise UserError(f"{what} '{source}': {offline_reason}") from e
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        kind = "a Stable Diffusion model" if what == "model" else "an AutoencoderKL"
        raise UserError(f"{what} '{source}': cannot be loaded as {kind} ({reason})") from e


def _tiny_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
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
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=77,
                         pad_token=pad_token)


def _tiny_unet(**layout) -> UNet2DConditionModel:
    """The tiny models' UNet: two blocks of 32 and 64 channels at 1/8 of the native size, and `layout`."""
    return UNet2DConditionModel(sample_size=tiny_resolution() // 8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), **layout)


def _tiny_vae(scaling_factor: float) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 32),
        norm_num_groups=8,
        layers_per_block=1,
        sample_size=tiny_resolution(),
        scaling_factor=scaling_factor,
    )


def _tiny_text_config(tokenizer: CLIPTokenizer, **extra) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _tiny_pipeline() -> StableDiffusionPipeline:
    """A small, randomly initialised SD 1.x-shaped pipeline; identical weights on every call."""
    tokenizer = _tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        unet = _tiny_unet(
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=4,
        )
        vae = _tiny_vae(scaling_factor=0.18215)
        text_encoder = CLIPTextModel(_tiny_text_config(tokenizer))
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


def _tiny_sdxl_pipeline() -> StableDiffusionXLPipeline:
    """A small, randomly initialised SDXL-shaped pipeline (two text encoders, pooled text and size/crop
    conditioning, a UNet block with two transformer layers, SDXL's VAE scale and Euler sampler); identical
    weights on every call."""
    tokenizer, tokenizer_2 = _tiny_tokenizer(), _tiny_tokenizer(pad_token="!")  # as SDXL's: bigG pads with "!"
    time_dim, pooled_dim = 8, 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_TINY_SEED)
        unet = _tiny_unet(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=64,  # both encoders' hidden states, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            projection_class_embeddings_input_dim=6 * time_dim + pooled_dim,
        )
        vae = _tiny_vae(scaling_factor=0.13025)
        text_encoder = CLIPTextModel(_tiny_text_config(tokenizer))
        text_encoder_2 = CLIPTextModelWithProjection(  # OpenCLIP bigG: GELU
            _tiny_text_config(tokenizer_2, projection_dim=pooled_dim, hidden_act="gelu"))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**_SDXL_SCHEDULE),
        add_watermarker=False,
    )
