"""Throughput of scoring and generation: images per second through full-size CLIP ViT-B/32 (open_clip) and
DINO ViT-S/16 (timm) with random weights, preprocessing included, and seconds per image generated with
the built-in `tiny` model. On a GPU, encoders also run under bf16 autocast.

    HF_HUB_OFFLINE=1 python scripts/bench_scoring.py [--images 32] [--batch-size 16] [--steps 25] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import timm
import torch
from PIL import Image

from dreamlr.diffusion.generate import Settings, generate_folder
from dreamlr.evaluation.encoders import ClipEncoder, DinoEncoder, ImageEncoder
from dreamlr.evaluation.prompts import load_prompts


def random_clip(device: str) -> ClipEncoder:
    model = open_clip.CLIP(**open_clip.get_model_config("ViT-B-32"))
    return ClipEncoder(model, open_clip.get_tokenizer("ViT-B-32"), "ViT-B-32 (random)", 224,
                       open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD, device=device)


def random_dino(device: str) -> DinoEncoder:
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0)
    cfg = timm.data.resolve_data_config({}, model=model)
    return DinoEncoder(model, "vit_small_patch16_224 (random)", 224, cfg["mean"], cfg["std"], device=device)


def images_per_second(encoder: ImageEncoder, images: list[Image.Image], batch_size: int, dtype: torch.dtype,
                      repeats: int) -> float:
    """Embedding throughput, preprocessing included: the best of `repeats` passes after a warm-up batch."""
    autocast = (torch.autocast(encoder.device.type, dtype=dtype) if dtype != torch.float32
                else contextlib.nullcontext())
    best = float("inf")
    with autocast:
        encoder.embed_images(images[:batch_size])
        for _ in range(repeats):
            if encoder.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(0, len(images), batch_size):
                encoder.embed_images(images[i:i + batch_size])
            if encoder.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
    return len(images) / best


def seconds_per_generated_image(steps: int, batch_size: int, count: int, repeats: int) -> float:
    """Wall time per image of a whole `generate_folder` run on `tiny` (64 px, model load included), best of
    `repeats` runs after a warm-up run."""
    prompts = load_prompts("dreambench:object", "sks", "toy")[: max(1, count // 2)]
    settings = Settings(num_images=2, steps=steps, batch_size=batch_size)
    best = float("inf")
    with tempfile.TemporaryDirectory() as folder:
        generate_folder("tiny", prompts[:1], Path(folder) / "warm-up", Settings(num_images=1, steps=1))
        for run in range(repeats):
            start = time.perf_counter()
            entries = generate_folder("tiny", prompts, Path(folder) / f"run{run}", settings)
            best = min(best, (time.perf_counter() - start) / len(entries))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images scored per encoder per pass")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25, help="sampling steps for the generation timing")
    parser.add_argument("--gen-images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the best counts (shared CPUs are noisy)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(args.images)]
    runs = [("cpu", torch.float32)]
    if torch.cuda.is_available():
        runs += [("cuda", torch.float32), ("cuda", torch.bfloat16)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print("\n| encoder | device | dtype | batch | images/s |\n|---|---|---|---:|---:|")
    for device, dtype in runs:
        for encoder in (random_clip(device), random_dino(device)):
            rate = images_per_second(encoder, images, args.batch_size, dtype, args.repeats)
            dtype_name = str(dtype).removeprefix("torch.")
            print(f"| {encoder.spec} | {device} | {dtype_name} | {args.batch_size} | {rate:.1f} |")
    print(f"\n| generation (`tiny`, 64 px, {args.steps} steps) | batch | s/image |\n|---|---:|---:|")
    for batch_size in (1, 4):
        seconds = seconds_per_generated_image(args.steps, batch_size, args.gen_images, args.repeats)
        print(f"| {'cuda' if torch.cuda.is_available() else 'cpu'} | {batch_size} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
