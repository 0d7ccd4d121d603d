"""The DreamBooth trainer: adapters on the UNet (and text encoder), cached latents, checkpoints, samples."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
import dataclasses
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from dreamlr import __version__, tracking
from dreamlr.adapters import AdapterConfig, attach, count_parameters, save_adapter, set_step
from dreamlr.adapters.ema import AdapterEMA
from dreamlr.diffusion.config import DreamBoothConfig
from dreamlr.diffusion.concepts import Subset
from dreamlr.diffusion.data import load_instance_images
from dreamlr.images import IMAGE_SUFFIXES
from dreamlr.diffusion.losses import dreambooth_loss
from dreamlr.diffusion.sample_prompts import SamplePrompt, write_sheet
from dreamlr.diffusion.views import ViewPool, Views, encode_views
from dreamlr.diffusion.models import (ZERO_SNR_GUIDANCE_RESCALE, Components, load_components,
                                     pipeline_from_components, zero_snr_schedulers)
from dreamlr.errors import UserError
from dreamlr.fileio import atomic_path, cache_root, inside, write_text, write_yaml
from dreamlr.optimizers import build_optimizer
from dreamlr.training import (
    ADAPTER_FILE,
    EMA_FILE,
    CheckpointManager,
    MetricsLog,
    adapter_groups,
    build_lr_scheduler,
    check_run_folder,
    check_weights_finite,
    start_run_folder,
)
from dreamlr.training.config import ALIASES
from dreamlr.training.loop import TrainingLoop, end_run, start_accelerator

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# keys a resumed run may change: how long it runs, how often it checkpoints and samples
RESUME_MAY_CHANGE = ("max_train_steps", "checkpointing_steps", "checkpoints_total_limit", "validation_prompt",
                     "validation_steps", "num_validation_images", "validation_inference_steps", "report_to",
                     "sample_prompts")


def train(config: DreamBoothConfig, overwrite: bool = False) -> Path:
    """Run DreamBooth with `config`; returns the run folder (DESIGN §3 layout).

    The folder must be new or empty, or hold this run when resuming with the same training keys;
    `overwrite` deletes what it holds first."""
    run_dir = Path(config.output_dir).expanduser().resolve()
    subsets = config.subsets()
    for subset in subsets:
        load_instance_images(subset.instance_data_dir)  # fail on bad data before loading any model
    if any(s.class_data_dir for s in subsets) and not config.with_prior_preservation:
        raise UserError("class_data_dir is set but with_prior_preservation is false; enable it or drop the folder")
    config.check_device()
    check_run_folder(run_dir, config.to_dict(), DreamBoothConfig().to_dict(), overwrite=overwrite,
                     may_change=RESUME_MAY_CHANGE, aliases=ALIASES,
                     inputs=(*(d for s in subsets for d in (s.instance_data_dir, s.class_data_dir)),
                             config.pretrained_model_name_or_path))
    checkpoints = CheckpointManager(run_dir, config.checkpoints_total_limit, config.mixed_precision)
    resume_from = checkpoints.resolve(config.resume_from_checkpoint)
    if resume_from is not None:
        CheckpointManager.checkpoint_step(resume_from, config.max_train_steps)
    accelerator = start_accelerator(config.mixed_precision,
                                    **tracking.accelerator_options(config.report_to, run_dir))
    device, weight_dtype = accelerator.device, DTYPES[config.mixed_precision]
    parts = load_components(config.pretrained_model_name_or_path, vae=config.vae)
    config.check_model_kind(parts.is_sdxl)
    if config.rescale_betas_zero_snr:
        parts.noise_scheduler, parts.scheduler = zero_snr_schedulers(parts.scheduler.config, parts.source)
    with accelerator.main_process_first():  # the main process generates missing class images, the others read them
        class_dirs = [prepare_class_images(subset_config(config, s), parts, device) for s in subsets] \
            if config.with_prior_preservation else []

    for model in (parts.unet, parts.vae, *parts.text_encoders().values()):
        model.requires_grad_(False).to(device)
        if model.dtype != weight_dtype:
            model.to(weight_dtype)
    views = dict(center_crop=config.center_crop, random_flip=config.random_flip, seed=config.seed, device=device,
                 bucket_options=config.bucket_options(), max_upscale=config.bucket_max_upscale)
    instance = encode_views(parts.vae, [(s, None) for s in subsets], caption_prefix=config.caption_prefix, **views)
    prior = encode_views(parts.vae, list(zip(subsets, class_dirs)), kind="class", **views) if class_dirs else None

    torch.manual_seed(config.seed)  # adapter initialization
    adapted = nn.ModuleDict({"unet": parts.unet})
    attach(parts.unet, config.unet_adapter_config())
    optimizer_parts = {"unet": (parts.unet, config.learning_rate)}
    if config.train_text_encoder:
        for name, encoder in parts.text_encoders().items():
            attach(encoder, config.text_encoder_adapter_config(name))
            adapted[name] = encoder
            optimizer_parts[name] = (encoder, config.text_encoder_learning_rate(name))
    if config.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            for encoder in parts.text_encoders().values():
                encoder.gradient_checkpointing_enable()

    optimizer = build_optimizer(adapter_groups(optimizer_parts), name=config.optimizer, beta1=config.adam_beta1,
                                beta2=config.adam_beta2,
                                weight_decay=config.weight_decay, epsilon=config.adam_epsilon)
    lr_scheduler = build_lr_scheduler(optimizer, config.lr_scheduler, config.lr_warmup_steps, config.max_train_steps)
    ema = AdapterEMA(adapted, config.ema_decay) if config.ema_decay else None
    start_step = 0
    if resume_from is not None:
        start_step = CheckpointManager.load(resume_from, adapted, optimizer, lr_scheduler, ema)
    set_step(adapted, start_step)
    # only trained models go through prepare (several processes: DDP wraps them, and refuses frozen ones)
    *prepared, optimizer = accelerator.prepare(*adapted.values(), optimizer)
    wrapped = dict(zip(adapted, prepared))
    unet = wrapped["unet"]
    text_encoders = {name: wrapped.get(name, encoder) for name, encoder in parts.text_encoders().items()}

    accelerator.wait_for_everyone()  # every process has checked the run folder before the main one writes
    main = accelerator.is_main_process
    if main:
        start_run_folder(run_dir, overwrite)
        write_yaml(run_dir / "config.yaml", config.to_dict())
    tracking.start(accelerator, config.report_to, config.to_dict())
    metadata = run_metadata(config)
    samples = config.sample_prompt_list()
    embed = PromptEncoder(parts, text_encoders, trainable=config.train_text_encoder)
    unet.train()
    for encoder in text_encoders.values():
        encoder.train(config.train_text_encoder)
    loop = TrainingLoop(accelerator, adapted, list(wrapped.values()), optimizer, lr_scheduler, checkpoints,
                        MetricsLog(run_dir / "metrics.jsonl", start_step) if main else None, seed=config.seed,
                        accumulation=config.gradient_accumulation_steps, max_grad_norm=config.max_grad_norm,
                        checkpointing_steps=config.checkpointing_steps, metadata=metadata,
                        mixed_precision=config.mixed_precision, ema=ema)

    def micro_loss(step: int, index: int, generator: torch.Generator) -> torch.Tensor:
        return micro_step(config, parts, unet, embed, instance, prior, generator, device, weight_dtype)

    def validate(done: int) -> None:
        if done % config.validation_steps == 0 or done == config.max_train_steps:
            with accelerator.autocast():  # the prepared UNet returns fp32 latents to a bf16/fp16 VAE
                images = save_samples(config, parts, run_dir / "samples" / f"step-{done}", device, samples)
            tracking.log_images(accelerator, config.report_to, images, done)
            unet.train()

    loop.run(start_step, config.max_train_steps, micro_loss, after_step=validate)
    end_run(accelerator)
    if main:
        check_weights_finite(adapted, optimizer, config.max_train_steps, checkpoints, config.mixed_precision)
        save_adapter(adapted, run_dir / ADAPTER_FILE, metadata={**metadata, "step": config.max_train_steps})
        if ema is not None:
            with ema.applied():
                save_adapter(adapted, run_dir / EMA_FILE, metadata={**metadata, "step": config.max_train_steps,
                                                                    "ema_decay": config.ema_decay})
        write_text(run_dir / "README.md", model_card(config, count_parameters(adapted)))
    return run_dir


def micro_step(config: DreamBoothConfig, parts: Components, unet: nn.Module, embed: PromptEncoder,
               instance: ViewPool, prior: ViewPool | None, generator: torch.Generator,
               device: torch.device, weight_dtype: torch.dtype) -> torch.Tensor:
    """The loss of one micro-batch: instance views (+ as many class views), all randomness from `generator`.
    Instance and class views of one latent size share one UNet call; of two sizes (buckets), one call each."""
    batch = config.train_batch_size
    views = instance.draw(batch, generator)
    policy = config.caption_policy()
    if policy.active:
        views = views._replace(prompts=[policy.apply(p, generator) for p in views.prompts])
    if prior is None:
        return _denoising(config, parts, unet, embed, views, generator, device, weight_dtype)
    kept = prior.draw(batch, generator)
    if kept.latents.shape == views.latents.shape:
        return _denoising(config, parts, unet, embed, views.joined(kept), generator, device, weight_dtype,
                          prior_count=batch)
    own = _denoising(config, parts, unet, embed, views, generator, device, weight_dtype)
    return own + config.prior_loss_weight * _denoising(config, parts, unet, embed, kept, generator, device,
                                                       weight_dtype)


def _denoising(config: DreamBoothConfig, parts: Components, unet: nn.Module, embed: PromptEncoder, views: Views,
               generator: torch.Generator, device: torch.device, weight_dtype: torch.dtype,
               prior_count: int = 0) -> torch.Tensor:
    """Noise the views' latents at random timesteps and return the DreamBooth loss of the UNet's prediction.
    SDXL's UNet also gets the pooled text embedding and each view's size and crop (`time_ids`)."""
    latents = views.latents * parts.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=generator)
    if config.noise_offset:
        noise += config.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=generator)
    noise = noise.to(device)
    schedule = parts.noise_scheduler
    timesteps = torch.randint(0, schedule.config.num_train_timesteps, (latents.shape[0],), generator=generator).to(device)
    noisy = schedule.add_noise(latents, noise, timesteps)
    hidden, pooled = embed(views.prompts)
    extra = {}
    if pooled is not None:
        extra["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": views.time_ids.to(device, hidden.dtype)}
    pred = unet(noisy.to(weight_dtype), timesteps, hidden, **extra).sample
    return dreambooth_loss(schedule, pred, latents, noise, timesteps, snr_gamma=config.snr_gamma,
                           prior_count=prior_count, prior_loss_weight=config.prior_loss_weight)


class PromptEncoder:
    """Text conditioning of prompts: the text encoder's last hidden states (SD), or for SDXL both encoders'
    penultimate hidden states concatenated plus the second one's pooled projection, as SDXL was trained.
    When the encoders are frozen, cached per distinct prompt (the `capacity` most recently used: shuffled
    captions can make many)."""

    def __init__(self, parts: Components, text_encoders: dict[str, nn.Module], trainable: bool,
                 capacity: int = 1024) -> None:
        self.pairs = [(parts.tokenizer, text_encoders["text_encoder"])]
        if parts.is_sdxl:
            self.pairs.append((parts.tokenizer_2, text_encoders["text_encoder_2"]))
        self.trainable = trainable
        self.cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor | None]] = OrderedDict()
        self.capacity = capacity

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states B×77×D, pooled B×P or None for SD)."""
        if self.trainable:
            return self._encode(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self.cache]
        if missing:
            with torch.no_grad():
                hidden, pooled = self._encode(missing)
                self.cache.update((p, (hidden[i], None if pooled is None else pooled[i])) for i, p in enumerate(missing))
        for p in prompts:
            self.cache.move_to_end(p)
        hidden = torch.stack([self.cache[p][0] for p in prompts])
        pooled = None if self.cache[prompts[0]][1] is None else torch.stack([self.cache[p][1] for p in prompts])
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return hidden, pooled

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if len(self.pairs) == 1:
            return self._run(*self.pairs[0], prompts)[0], None
        hidden, pooled = [], None
        for tokenizer, encoder in self.pairs:
            output = self._run(tokenizer, encoder, prompts, hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled = output[0]  # the last encoder's projected pooled output
        return torch.cat(hidden, dim=-1), pooled

    @staticmethod
    def _run(tokenizer, encoder: nn.Module, prompts: list[str], hidden_states: bool = False):
        tokens = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt").input_ids
        device = next(encoder.parameters()).device
        return encoder(tokens.to(device), output_hidden_states=hidden_states)


def prepare_class_images(config: DreamBoothConfig, parts: Components, device: torch.device) -> Path:
    """The class-image folder, topped up to `num_class_images` with the base model's generations.

    Without `class_data_dir` the images go to a cache keyed by model, class prompt and resolution,
    so the next run reuses them.
    """
    folder = Path(config.class_data_dir) if config.class_data_dir else class_image_cache(config)
    folder.mkdir(parents=True, exist_ok=True)
    existing = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    missing = config.num_class_images - len(existing)
    if missing <= 0:
        return folder
    pipe = pipeline_from_components(parts).to(device)
    generator = torch.Generator().manual_seed(config.seed)
    for index in range(len(existing), config.num_class_images):
        image = pipe(config.class_prompt, height=config.resolution, width=config.resolution,
                     num_inference_steps=config.validation_inference_steps, generator=generator).images[0]
        with atomic_path(folder / f"class-{index:04d}.png") as tmp:
            image.save(tmp, format="PNG")
    return folder


def subset_config(config: DreamBoothConfig, subset: Subset) -> DreamBoothConfig:
    """The config with one subset's class prompt, class folder and resolution (for its class images)."""
    return dataclasses.replace(config, class_prompt=subset.class_prompt, class_data_dir=subset.class_data_dir,
                               resolution=subset.resolution)


def class_image_cache(config: DreamBoothConfig) -> Path:
    key = f"{config.pretrained_model_name_or_path}|{config.class_prompt}|{config.resolution}"
    return cache_root() / "class_images" / hashlib.sha256(key.encode()).hexdigest()[:16]


@torch.no_grad()
def save_samples(config: DreamBoothConfig, parts: Components, folder: Path, device: torch.device,
                 samples: list[SamplePrompt]) -> list[Image.Image]:
    """Validation images from the current adapter, same seeds every time, then the images of `samples`
    (the sample-prompt file, read once per run) and their contact sheet; returns them all."""
    if not config.num_validation_images and not samples:
        return []
    pipe = pipeline_from_components(parts)
    pipe.set_progress_bar_config(disable=True)
    prompt = config.validation_prompt or config.main_prompt
    generator = torch.Generator().manual_seed(config.seed)
    rescale = {"guidance_rescale": ZERO_SNR_GUIDANCE_RESCALE} if config.rescale_betas_zero_snr else {}
    inside(folder, Path(config.output_dir).expanduser())
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(config.num_validation_images):
        image = pipe(prompt, height=config.resolution, width=config.resolution,
                     num_inference_steps=config.validation_inference_steps, generator=generator, **rescale).images[0]
        with atomic_path(folder / f"{index}.png") as tmp:
            image.save(tmp, format="PNG")
        images.append(image)
    for index, sample in enumerate(samples):
        image = pipe(sample.text, negative_prompt=sample.negative or None, height=sample.height, width=sample.width,
                     num_inference_steps=sample.steps, guidance_scale=sample.scale,
                     generator=torch.Generator().manual_seed(sample.seed), **rescale).images[0]
        with atomic_path(folder / sample.file_name(index)) as tmp:
            image.save(tmp, format="PNG")
        images.append(image)
    if samples:
        write_sheet(folder.parent, samples)
    return images


def run_metadata(config: DreamBoothConfig) -> dict:
    return {"base_model": config.pretrained_model_name_or_path, "instance_prompt": config.main_prompt,
            "dreamlr_version": __version__}


def _concepts_lines(config: DreamBoothConfig) -> str:
    """The model card's list of concepts (with `dataset`) and of bucketing, or nothing."""
    lines = []
    if config.dataset is not None:
        lines.append("- concepts:")
        for s in config.subsets():
            extra = f", class prompt '{s.class_prompt}'" if config.with_prior_preservation else ""
            lines.append(f"  - `{s.instance_data_dir}`: '{s.instance_prompt}'{extra}, repeats {s.repeats}, "
                         f"resolution {s.resolution}{', buckets' if s.bucket else ''}")
    elif config.bucket:
        lines.append(f"- aspect-ratio buckets: sides multiples of {config.bucket_resolution_steps}")
    return "".join(line + "\n" for line in lines)


def _zero_snr_line(config: DreamBoothConfig) -> str:
    if not config.rescale_betas_zero_snr:
        return ""
    return ("- zero terminal SNR: trained on the rescaled schedule; sample the same way (`dreamlr generate --zero-snr`: "
            f"DDIM, rescaled betas, trailing timesteps, guidance_rescale {ZERO_SNR_GUIDANCE_RESCALE})\n")


def model_card(config: DreamBoothConfig, trainable: int) -> str:
    """A short README for the run folder: what was trained and how to load it."""
    adapter = AdapterConfig.from_dict(config.adapter)
    parts = "UNet and text encoder" if config.train_text_encoder else "UNet"
    return f"""# DreamBooth adapter: {config.main_prompt}

- base model: `{config.pretrained_model_name_or_path}`
- adapter: `{adapter.variant}`, rank {adapter.rank}, alpha {adapter.alpha}, targets `{adapter.targets}` ({parts})
- trainable parameters: {trainable:,}
- steps: {config.max_train_steps} (batch {config.train_batch_size} × {config.gradient_accumulation_steps} accumulation), learning rate {config.learning_rate}, seed {config.seed}
- prior preservation: {f"yes, '{config.class_prompt}', weight {config.prior_loss_weight}" if config.with_prior_preservation else "no"}
{_concepts_lines(config)}{_zero_snr_line(config)}- EMA: {f"decay {config.ema_decay}; `{EMA_FILE}` holds the moving average, `{ADAPTER_FILE}` the last step's tensors" if config.ema_decay else "no"}
- trained with dreamlr {__version__}

## Use it

```bash
dreamlr generate --model {config.pretrained_model_name_or_path} --adapter adapter.safetensors --prompts prompts.txt --output-dir out
```

```python
from dreamlr.diffusion import load_pipeline
pipe = load_pipeline("{config.pretrained_model_name_or_path}", adapter="adapter.safetensors", merge=True)
image = pipe("{config.main_prompt}").images[0]
```
"""
