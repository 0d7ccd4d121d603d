"""Aspect-ratio buckets (as kohya's sd-scripts and NovelAI's bucketing): sizes whose sides are multiples of
`step`, within [min_side, max_side], with about resolution² pixels (never more); each image goes to the
bucket of nearest aspect ratio (in log space) and is resized to just cover it, then cropped minimally."""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Buckets:
    """The bucket sizes (width, height) for one training resolution."""

    resolution: int
    step: int = 64
    min_side: int | None = None
    max_side: int | None = None

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """Every bucket, widest first; always holds the square one nearest to resolution x resolution."""
        low = self.min_side or max(self.step, self.resolution // 2 // self.step * self.step)
        high = self.max_side or self.resolution * 2
        area = self.resolution * self.resolution
        found = set()
        for width in range(low - low % self.step or self.step, high + 1, self.step):
            if width < low:
                continue
            height = min(high, area // width // self.step * self.step)
            if height >= low:
                found.update({(width, height), (height, width)})
        square = max(self.step, self.resolution // self.step * self.step)
        found.add((square, square))
        return sorted(found, key=lambda s: (-s[0] / s[1], s))

    def assign(self, width: int, height: int) -> tuple[int, int]:
        """The bucket of nearest aspect ratio to a width x height image (ties: the larger area)."""
        ratio = math.log(width / height)
        return min(self.sizes, key=lambda s: (abs(math.log(s[0] / s[1]) - ratio), -s[0] * s[1]))


def upscale_factor(image: Image.Image, target: tuple[int, int]) -> float:
    """How much `cover` enlarges the image to fill `target` (1 or less: no upscaling)."""
    return max(target[0] / image.width, target[1] / image.height)


def cover(image: Image.Image, target: tuple[int, int], left_frac: float = 0.5,
          top_frac: float = 0.5) -> tuple[Image.Image, tuple[int, int], int]:
    """Resize so the image just covers `target`, then crop to it; the crop's offset within the slack is
    `left_frac`, `top_frac` (0.5, 0.5: centred). Returns the crop, its (top, left) in the resized image, and the resized image's width."""
    scale = upscale_factor(image, target)
    size = (max(target[0], round(image.width * scale)), max(target[1], round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    left = round((image.width - target[0]) * left_frac)
    top = round((image.height - target[1]) * top_frac)
    return image.crop((left, top, left + target[0], top + target[1])), (top, left), image.width
