"""Does personalization learn the subject? Generations of the same prompt from the same initial noise, before
and after DreamBooth, scored against the subject's reference images by the DreamBench protocol (mean cosine
over every (generation, reference) pair) -- used by scripts/bench_world_personalization.py and the CI test
that fails when training stops learning."""

from __future__ import annotations

import torch
from PIL import Image

from dreamlr.diffusion.generate import image_seed


@torch.no_grad()
def generate(pipe, prompt: str, seed: int, count: int, steps: int = 25, guidance: float = 5.0,
             size: int = 64) -> list[Image.Image]:
    """`count` images of `prompt`; image k starts from the noise of image_seed(seed, prompt, k), so two
    pipelines given the same arguments start from the same noise."""
    return [pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                 generator=torch.Generator().manual_seed(image_seed(seed, prompt, k))).images[0]
            for k in range(count)]


def subject_scorers(instance_data_dir: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """world-DINO and world-CLIP-I as {"dino": …, "clip_i": …}, and each one's reference embeddings of the subject
    images in `instance_data_dir` (read as `dreamlr train` reads the folder, relative to the working directory)."""
    from dreamlr.evaluation.encoders import load_clip, load_dino
    from dreamlr.images import image_files, read_image

    references = [read_image(path, "subject") for path in image_files(instance_data_dir, "subject")]
    encoders = {"dino": load_dino("world"), "clip_i": load_clip("world")}
    return encoders, {name: reference_embeddings(encoder, references) for name, encoder in encoders.items()}


def reference_embeddings(encoder, references: list[Image.Image]) -> torch.Tensor:
    """Unit embeddings (n, d) of the subject's reference images."""
    return torch.nn.functional.normalize(encoder.embed_images(references), dim=1)


def similarity(encoder, generated: list[Image.Image], references: torch.Tensor) -> float:
    """Mean cosine of the generations to the references (unit embeddings), over every pair."""
    emb = torch.nn.functional.normalize(encoder.embed_images(generated), dim=1)
    return float((emb @ references.T).mean())
