"""The DreamBooth run configuration: YAML file + flags + `--set key=value`, validated before any work.

Keys are named as in diffusers' DreamBooth scripts where one exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamlr.adapters import AdapterConfig
from dreamlr.diffusion.captions import CaptionPolicy
from dreamlr.diffusion.concepts import Subset, read_subsets
from dreamlr.diffusion.sample_prompts import SamplePrompt, read_sample_prompts
from dreamlr.config_files import build_config, check_output_dir, check_types
from dreamlr import tracking
from dreamlr.errors import UserError
from dreamlr.training.config import TrainingKeys


@dataclass
class DreamBoothConfig(TrainingKeys):
    """Every setting of a DreamBooth run. `adapter` is an AdapterConfig dict; `text_encoder_adapter`
    overrides it for the text encoder(s) (used when `train_text_encoder`), and `text_encoder_2_adapter`
    overrides that for SDXL's second text encoder."""

    pretrained_model_name_or_path: str = "tiny"
    vae: str | None = None
    instance_data_dir: str = ""
    instance_prompt: str = ""
    output_dir: str = "runs/dreambooth"
    adapter: dict[str, Any] = field(default_factory=lambda: {"variant": "lora", "rank": 8, "targets": "attn"})
    train_text_encoder: bool = False
    text_encoder_adapter: dict[str, Any] = field(default_factory=lambda: {"targets": "clip-attn"})
    text_encoder_lr: float | None = None
    text_encoder_2_adapter: dict[str, Any] = field(default_factory=dict)
    text_encoder_2_lr: float | None = None
    with_prior_preservation: bool = False
    class_data_dir: str | None = None
    class_prompt: str | None = None
    num_class_images: int = 100
    prior_loss_weight: float = 1.0
    resolution: int = 512
    center_crop: bool = True
    bucket: bool = False
    bucket_resolution_steps: int = 64
    min_bucket_side: int | None = None
    max_bucket_side: int | None = None
    bucket_max_upscale: float = 1.0
    dataset: dict | str | None = None
    caption_prefix: str | None = None
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    random_flip: bool = False
    train_batch_size: int = 1
    max_train_steps: int = 400
    gradient_checkpointing: bool = False
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    ema_decay: float | None = None
    snr_gamma: float | None = None
    rescale_betas_zero_snr: bool = False
    noise_offset: float = 0.0
    checkpointing_steps: int = 100
    validation_prompt: str | None = None
    validation_steps: int = 100
    num_validation_images: int = 2
    validation_inference_steps: int = 25
    report_to: str = "none"
    sample_prompts: str | None = None

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def from_sources(cls, config_file: str | None = None, overrides: dict[str, Any] | None = None,
                     validate: bool = True) -> DreamBoothConfig:
        """Defaults < YAML file < overrides (dotted keys reach into `adapter`); then validated (unless the caller
        completes the config first and validates it itself)."""
        data = build_config(cls, config_file, overrides, "dreamlr train",
                            nested=("adapter", "text_encoder_adapter", "text_encoder_2_adapter"))
        config = cls(**data)
        if validate:
            config.validate()
        return config

    def validate(self) -> None:
        """Types and ranges of every key, and the adapter configs; raises UserError on the first problem."""
        check_types(self)
        if self.dataset is None:
            if not self.instance_data_dir:
                raise UserError("instance_data_dir is not set: give --instance-dir DIR")
            if Path(self.instance_data_dir).expanduser().is_file():
                raise UserError(f"instance_data_dir '{self.instance_data_dir}' is a file, not a folder; give the "
                                "folder that holds the subject images (--instance-dir DIR)")
        check_output_dir(self.output_dir)
        if self.dataset is None and not self.instance_prompt:
            raise UserError("instance_prompt is not set: give --instance-prompt 'a photo of sks dog'")
        if self.resolution < 8 or self.resolution % 8:
            raise UserError(f"resolution must be a positive multiple of 8, got {self.resolution}")
        self._check_buckets()
        subsets = self.subsets()
        for key in ("max_train_steps", "num_class_images", "validation_steps", "validation_inference_steps"):
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be at least 1, got {getattr(self, key)}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise UserError(f"ema_decay must be in (0, 1) (e.g. 0.999) or null, got {self.ema_decay}")
        tracking.check_report_to(self.report_to)
        self.sample_prompt_list()
        if self.keep_tokens < 0:
            raise UserError(f"keep_tokens must be 0 or more, got {self.keep_tokens}")
        if not 0 <= self.caption_dropout_rate < 1:
            raise UserError(f"caption_dropout_rate must be in [0, 1), got {self.caption_dropout_rate}")
        if self.keep_tokens and not self.shuffle_caption:
            raise UserError("keep_tokens only applies with shuffle_caption: true; set both or drop keep_tokens")
        if any(lr is not None and lr <= 0 for lr in (self.text_encoder_lr, self.text_encoder_2_lr)):
            raise UserError("learning rates must be positive")
        self.check_training_keys()
        missing = next((k for k, sub in enumerate(subsets, start=1) if not sub.class_prompt), None)
        if self.with_prior_preservation and missing is not None:
            where = f"dataset subset {missing}" if self.dataset is not None else "with_prior_preservation"
            raise UserError(f"{where} needs class_prompt (e.g. 'a photo of dog') for prior preservation")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise UserError(f"snr_gamma must be positive, got {self.snr_gamma}")
        from dreamlr.diffusion.models import check_model_source

        check_model_source(self.pretrained_model_name_or_path, zero_snr=self.rescale_betas_zero_snr)
        if self.vae is not None and not self.vae:
            raise UserError("vae is empty: give a diffusers AutoencoderKL folder or hub id, or leave it out")
        self.unet_adapter_config()
        if self.train_text_encoder:
            self.text_encoder_adapter_config("text_encoder")
            self.text_encoder_adapter_config("text_encoder_2")

    def _check_buckets(self) -> None:
        step = self.bucket_resolution_steps
        if step < 8 or step % 8:
            raise UserError(f"bucket_resolution_steps must be a positive multiple of 8, got {step}")
        for key in ("min_bucket_side", "max_bucket_side"):
            value = getattr(self, key)
            if value is not None and (value < step or value % step):
                raise UserError(f"{key} must be a multiple of bucket_resolution_steps ({step}), got {value}")
        if self.min_bucket_side and self.max_bucket_side and self.min_bucket_side > self.max_bucket_side:
            raise UserError(f"min_bucket_side ({self.min_bucket_side}) is above max_bucket_side ({self.max_bucket_side})")
        if self.bucket_max_upscale < 1:
            raise UserError(f"bucket_max_upscale must be 1 or more, got {self.bucket_max_upscale}")

    def bucket_options(self) -> dict[str, int | None]:
        """Buckets(...) keywords besides the resolution."""
        return {"step": self.bucket_resolution_steps, "min_side": self.min_bucket_side,
                "max_side": self.max_bucket_side}

    def subsets(self) -> list[Subset]:
        """The run's concepts (`dataset`), or one made of the top-level keys."""
        return read_subsets(self.dataset, self.to_dict())

    @property
    def main_prompt(self) -> str:
        """The instance prompt that names the run: the top-level one, else the first subset's."""
        return self.instance_prompt or self.subsets()[0].instance_prompt

    def sample_prompt_list(self) -> list[SamplePrompt]:
        """The sample-prompt file's prompts (none without one); defaults: the run's resolution and seed and
        the validation steps."""
        if not self.sample_prompts:
            return []
        return read_sample_prompts(self.sample_prompts, self.resolution, self.seed, self.validation_inference_steps)

    def caption_policy(self) -> CaptionPolicy:
        return CaptionPolicy(self.caption_dropout_rate, self.shuffle_caption, self.keep_tokens)

    def unet_adapter_config(self) -> AdapterConfig:
        return AdapterConfig.from_dict({"total_steps": self.max_train_steps, **self.adapter})

    def text_encoder_adapter_config(self, part: str = "text_encoder") -> AdapterConfig:
        """The adapter of text encoder `part` ("text_encoder", or SDXL's "text_encoder_2")."""
        second = self.text_encoder_2_adapter if part == "text_encoder_2" else {}
        return AdapterConfig.from_dict({"total_steps": self.max_train_steps, **self.adapter,
                                        **self.text_encoder_adapter, **second})

    def text_encoder_learning_rate(self, part: str) -> float:
        """Text encoder `part`'s learning rate: its own, else the text encoders', else the UNet's."""
        own = self.text_encoder_2_lr if part == "text_encoder_2" else None
        return next(lr for lr in (own, self.text_encoder_lr, self.learning_rate) if lr is not None)

    def check_model_kind(self, is_sdxl: bool) -> None:
        """A UserError when keys for SDXL's second text encoder are set for an SD 1.x/2.x model."""
        if not is_sdxl:
            extra = [k for k in ("text_encoder_2_adapter", "text_encoder_2_lr") if getattr(self, k)]
            if extra:
                raise UserError(f"{' and '.join(extra)} apply to SDXL's second text encoder, but model "
                                f"'{self.pretrained_model_name_or_path}' is Stable Diffusion 1.x/2.x; drop them")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
