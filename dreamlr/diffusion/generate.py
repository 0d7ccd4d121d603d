"""Generation for evaluation: prompts x seeds through a pipeline with weighted adapters, into a folder with
a `manifest.jsonl`.

Image `i` of a prompt uses the seed `image_seed(seed, prompt without the rare token, i)`, so the
same prompt and index give the same starting noise whatever the adapter, batch size or prompt order.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UniPCMultistepScheduler,
)
from tqdm.auto import tqdm

from dreamlr import __version__
from dreamlr.adapters import adapter_layers, detach, load_adapter, read_adapter_header
from dreamlr.diffusion.models import ZERO_SNR_GUIDANCE_RESCALE, adapter_modules, load_pipeline, zero_snr_schedulers
from dreamlr.devices import default_device
from dreamlr.errors import UserError
from dreamlr.images import sha256_file
from dreamlr.evaluation.manifest import MANIFEST_NAME, ManifestEntry, write_manifest
from dreamlr.evaluation.prompts import Prompt
from dreamlr.fileio import atomic_dir, remove_stale_temps

SCHEDULERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "pndm": PNDMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "dpmsolver": DPMSolverMultistepScheduler,
    "unipc": UniPCMultistepScheduler,
}


@dataclass(frozen=True)
class Settings:
    """How images are sampled; `scheduler` None keeps the model's own, `resolution` None its native size."""

    num_images: int = 4
    steps: int = 50
    guidance: float = 7.5
    scheduler: str | None = None
    resolution: int | None = None
    seed: int = 0
    batch_size: int = 4
    merge: bool = True
    zero_snr: bool = False  # sample as a zero-terminal-SNR model was trained (`zero_terminal_snr`)

    def check(self) -> None:
        """Raise a UserError for a value no run could use."""
        for name in ("num_images", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise UserError(f"--resolution must be a positive multiple of 8, not {self.resolution}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise UserError(f"--scheduler {self.scheduler!r} is unknown; choose one of {', '.join(SCHEDULERS)}")


def image_seed(seed: int, prompt: str, index: int) -> int:
    """The seed of image `index` of `prompt` (give the prompt without the rare token) under run seed `seed`."""
    digest = hashlib.sha256(f"{seed}\0{prompt}\0{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def apply_adapters(pipe: StableDiffusionPipeline, adapters: Sequence[str | os.PathLike], weights: Sequence[float],
                   merge: bool = True) -> None:
    """Put adapter files into the pipeline's UNet and text encoder(s).

    Merged (default): W = W0 + Σ weight_i · ΔW_i, each ΔW_i = W'_i − W0 taken against the original
    base weights (so the order of adapters does not matter); one adapter at weight 1 is the adapter
    library's own merge, bit for bit. Not merged: one adapter stays attached, at weight 1.
    """
    _check_adapter_args(adapters, weights, merge)
    model = adapter_modules(pipe)
    if not merge or (len(adapters) == 1 and weights[0] == 1):
        for path in adapters:
            load_adapter(model, path)
        if merge:
            detach(model, merge=True)
        return
    deltas: dict[str, torch.Tensor] = {}
    for path, weight in zip(adapters, weights):
        load_adapter(model, path)
        with torch.no_grad():
            for name, layer in adapter_layers(model):
                delta = weight * (layer.merged_weight() - layer.w0.float())
                deltas[name] = deltas[name] + delta if name in deltas else delta
        detach(model)
    with torch.no_grad():
        for name, delta in deltas.items():
            base = model.get_submodule(name).weight
            base.data = (base.data.float() + delta.reshape(base.shape)).to(base.dtype)


def _check_adapter_args(adapters: Sequence[str | os.PathLike], weights: Sequence[float], merge: bool) -> None:
    if len(weights) != len(adapters):
        raise UserError(f"--weights gives {len(weights)} weight(s) for {len(adapters)} adapter(s); "
                        "give one per --adapter")
    if not merge and (len(adapters) > 1 or any(w != 1 for w in weights)):
        raise UserError("--no-merge keeps one adapter live at weight 1; several adapters or other weights "
                        "need merging (drop --no-merge)")


def set_scheduler(pipe: StableDiffusionPipeline, name: str | None) -> str:
    """Switch the pipeline to a named sampler with the model's noise schedule; returns the sampler's class name."""
    if name is not None:
        pipe.scheduler = SCHEDULERS[name].from_config(pipe.scheduler.config)
    return type(pipe.scheduler).__name__


def generate_folder(
    model: str,
    prompts: list[Prompt],
    output_dir: str | os.PathLike,
    settings: Settings,
    adapters: Sequence[str | os.PathLike] = (),
    weights: Sequence[float] | None = None,
    extra: dict[str, Any] | None = None,
    device: str | torch.device | None = None,
) -> list[ManifestEntry]:
    """Generate `settings.num_images` images per prompt into `output_dir` (new or empty) with a manifest.

    Everything is checked before the model loads; images are written to a hidden sibling folder that
    takes `output_dir`'s place only when all are done (`dreamlr.fileio.atomic_dir`). `extra`
    (JSON-able) goes into each entry's settings. Runs on CUDA in fp16 when there is a GPU.
    """
    settings.check()
    if not prompts:
        raise UserError("no prompts to generate")
    weights = [1.0] * len(adapters) if weights is None else list(weights)
    _check_adapter_args(adapters, weights, settings.merge)
    output_dir = _check_output_dir(Path(output_dir).expanduser())
    adapter_records = []
    for path, weight in zip(adapters, weights):
        read_adapter_header(path)  # a missing or foreign file fails here, before any model work
        adapter_records.append({"path": str(Path(path).resolve()), "weight": weight, "sha256": sha256_file(path)})

    device = torch.device(device) if device else default_device()
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = load_pipeline(model, dtype=dtype, device=device)
    apply_adapters(pipe, adapters, weights, merge=settings.merge)
    rescale = {}
    if settings.zero_snr:
        if settings.scheduler not in (None, "ddim"):
            raise UserError(f"--zero-snr samples with DDIM (trailing timesteps, as Lin et al. 2023); drop --scheduler "
                            f"{settings.scheduler}")
        _, pipe.scheduler = zero_snr_schedulers(pipe.scheduler.config, model)
        rescale = {"guidance_rescale": ZERO_SNR_GUIDANCE_RESCALE}
    scheduler = set_scheduler(pipe, None if settings.zero_snr else settings.scheduler)
    pipe.set_progress_bar_config(disable=True)
    resolution = settings.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor
    recorded = {**asdict(settings), "scheduler": scheduler, "resolution": resolution, "dtype": str(dtype),
                "device": device.type, "dreamlr_version": __version__, **(extra or {})}

    jobs = [(p, i, prompt, image_seed(settings.seed, prompt.clean, i))
            for p, prompt in enumerate(prompts) for i in range(settings.num_images)]
    entries = []
    progress = tqdm(total=len(jobs), desc="generate", unit="image", disable=None)
    with atomic_dir(output_dir) as staging, progress as bar:
        for start in range(0, len(jobs), settings.batch_size):
            batch = jobs[start:start + settings.batch_size]
            images = pipe(
                prompt=[prompt.text for _, _, prompt, _ in batch],
                height=resolution,
                width=resolution,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                generator=[torch.Generator("cpu").manual_seed(seed) for *_, seed in batch],
                **rescale,
            ).images
            for (p, i, prompt, seed), image in zip(batch, images):
                name = f"{p:03d}-{i:02d}-{_slug(prompt.clean)}.png"
                image.save(staging / name)
                entries.append(ManifestEntry(
                    file=name, prompt=prompt.text, prompt_clean=prompt.clean, seed=seed, model=model,
                    prompt_index=p, image_index=i, adapter=adapter_records, settings=recorded))
            bar.update(len(batch))
        write_manifest(staging / MANIFEST_NAME, entries)
    return entries


def _check_output_dir(path: Path) -> Path:
    """The output folder, resolved (a symlink to a folder is followed); a UserError unless it is new or empty.
    Temp folders an interrupted run into it left beside it are removed."""
    resolved = path.resolve()  # `missing/../x` is x, as the folder it would write
    if resolved.exists() and not resolved.is_dir():
        raise UserError(f"--output-dir '{path}' is a file; give a new or empty folder")
    if resolved.is_dir() and any(resolved.iterdir()):
        raise UserError(f"--output-dir '{path}' already holds files; give a new or empty folder")
    if resolved.parent == resolved:
        raise UserError(f"--output-dir '{path}' is the file system's root; give a new or empty folder")
    remove_stale_temps(resolved.parent, resolved.name)
    return resolved


def _slug(text: str, limit: int = 48) -> str:
    """A file-name-safe short form of a prompt."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "prompt"
