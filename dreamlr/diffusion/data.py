"""DreamBooth data: instance (and class) images with optional captions, as training tensors."""

from __future__ import annotations

import random
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from dreamlr.diffusion.buckets import Buckets, cover
from dreamlr.diffusion.captions import with_prefix
from dreamlr.errors import UserError
from dreamlr.images import image_files, read_image


class InstanceImage(NamedTuple):
    """One training image (RGB), its caption from a same-name .txt file (or None), where it came from, and
    its size in the file (height, width; upright), before any resizing."""

    image: Image.Image
    caption: str | None
    path: Path
    original_size: tuple[int, int]


def load_instance_images(
    folder: str | Path, resolution: int | None = None, kind: str = "instance"
) -> list[InstanceImage]:
    """Read every image in `folder` (sorted by name) as RGB, shorter side resized to `resolution` if given.

    `kind` names the folder in error messages ("instance", "class").
    """
    paths = image_files(folder, kind)
    images = []
    for path in paths:
        image = read_image(path, kind)
        original_size = (image.height, image.width)
        if resolution is not None:
            image = _resize_shorter_side(image, resolution)
        images.append(InstanceImage(image, _read_caption(path.with_suffix(".txt"), kind), path, original_size))
    return images


def _read_caption(path: Path, kind: str) -> str | None:
    if not path.is_file():
        return None
    try:
        caption = " ".join(path.read_text(encoding="utf-8").split())
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{kind} caption '{path}': cannot be read as UTF-8 text ({e})") from e
    return caption or None


def _resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    scale = size / min(image.size)
    if scale == 1:
        return image
    new_size = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
    return image.resize(new_size, Image.Resampling.LANCZOS)


class DreamBoothDataset(Dataset):
    """Instance images as `pixel_values` (C×H×W in [-1, 1]) with `prompt` (caption, after `caption_prefix`
    when given, else the instance prompt) and `time_ids` (SDXL's size conditioning: the file's height and
    width, the crop's top and left in the resized image, the crop's height and width).

    With `class_dir` (prior preservation) each item also has `class_pixel_values` and `class_prompt`;
    the shorter list cycles. Random crops and flips depend only on (`seed`, epoch, index): call
    `set_epoch` each epoch for fresh ones.
    """

    def __init__(
        self,
        instance_dir: str | Path,
        instance_prompt: str,
        resolution: int,
        class_dir: str | Path | None = None,
        class_prompt: str | None = None,
        center_crop: bool = True,
        random_flip: bool = False,
        seed: int = 0,
        kind: str = "instance",
        caption_prefix: str | None = None,
        buckets: Buckets | None = None,
    ) -> None:
        if class_dir is not None and not class_prompt:
            raise UserError("prior preservation needs a class prompt along with the class image folder")
        # bucketed images keep their size until `cover` fits them to their bucket (one resampling)
        self.instance = load_instance_images(instance_dir, None if buckets else resolution, kind=kind)
        self.buckets = buckets
        self.classes = load_instance_images(class_dir, resolution, kind="class") if class_dir is not None else []
        self.instance_prompt, self.class_prompt = instance_prompt, class_prompt
        self.resolution, self.center_crop, self.random_flip = resolution, center_crop, random_flip
        self.seed, self.epoch = seed, 0
        self.caption_prefix = caption_prefix

    def set_epoch(self, epoch: int) -> None:
        """Select the random crops and flips of epoch `epoch`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return max(len(self.instance), len(self.classes))

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        item = self.instance[index % len(self.instance)]
        pixels, time_ids = self._pixels(item, rng)
        out = {"pixel_values": pixels, "time_ids": time_ids,
               "prompt": with_prefix(item.caption, self.caption_prefix) or self.instance_prompt}
        if self.classes:
            item = self.classes[index % len(self.classes)]
            out["class_pixel_values"], out["class_time_ids"] = self._pixels(item, rng)
            out["class_prompt"] = item.caption or self.class_prompt
        return out

    def _pixels(self, item: InstanceImage, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """Square crop at `resolution` (or, with buckets, the image's bucket), center or random, optional
        flip, scaled to [-1, 1]; and its `time_ids` (a flip mirrors the crop's left offset)."""
        image = item.image
        if self.buckets is not None:
            target = self.buckets.assign(image.width, image.height)
            fracs = (0.5, 0.5) if self.center_crop else (rng.random(), rng.random())
            image, (top, left), resized_width = cover(image, target, *fracs)
        else:
            image = _resize_shorter_side(image, self.resolution)
            size = self.resolution
            if self.center_crop:
                left, top = (image.width - size) // 2, (image.height - size) // 2
            else:
                left, top = rng.randint(0, image.width - size), rng.randint(0, image.height - size)
            resized_width = image.width
            image = image.crop((left, top, left + size, top + size))
        if self.random_flip and rng.random() < 0.5:
            image = ImageOps.mirror(image)
            left = resized_width - left - image.width
        time_ids = torch.tensor([*item.original_size, top, left, image.height, image.width], dtype=torch.float32)
        return TF.pil_to_tensor(image).float() / 127.5 - 1.0, time_ids
