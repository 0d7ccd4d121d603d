"""Surface patterns: a base colour with a pattern drawn over it in a second colour, as a square RGB tile."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw

from dreamlr.world.vocab import PATTERNS

RGB = tuple[int, int, int]


def pattern_image(pattern: str, base: RGB, ink: RGB, size: int) -> Image.Image:
    """A `size`-pixel RGB square of `base` colour with `pattern` in `ink` (a fixed phase: the same pattern
    draws the same way every time)."""
    if pattern not in PATTERNS:
        raise KeyError(f"unknown pattern {pattern!r}; choose one of {', '.join(PATTERNS)}")
    image = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(image)
    unit = size / 8  # pattern period: a drawn object spans roughly 4-6 periods
    if pattern == "stripes":
        for k in range(-1, 9):
            y = k * unit
            draw.rectangle((0, y, size, y + unit * 0.45), fill=ink)
    elif pattern == "dots":
        for row in range(9):
            for col in range(9):
                cx = (col + 0.5 * (row % 2)) * unit
                cy = (row + 0.5) * unit
                r = unit * 0.26
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=ink)
    elif pattern == "stars":
        step = unit * 1.5
        for row in range(7):
            for col in range(7):
                _star(draw, ((col + 0.5 * (row % 2)) * step, (row + 0.5) * step), unit * 0.55, ink)
    elif pattern == "checks":
        cell = unit * 0.75
        for row in range(int(size / cell) + 1):
            for col in range(int(size / cell) + 1):
                if (row + col) % 2:
                    draw.rectangle((col * cell, row * cell, (col + 1) * cell, (row + 1) * cell), fill=ink)
    elif pattern == "zigzag":
        for k in range(-1, 9):
            y0 = k * unit + unit / 2
            points = [(x * unit / 2, y0 + (unit * 0.3 if x % 2 else -unit * 0.3)) for x in range(18)]
            draw.line(points, fill=ink, width=max(2, round(unit * 0.22)))
    return image


def _star(draw: ImageDraw.ImageDraw, centre: tuple[float, float], radius: float, fill: RGB) -> None:
    """A five-pointed star."""
    cx, cy = centre
    points = []
    for k in range(10):
        r = radius if k % 2 == 0 else radius * 0.42
        angle = -math.pi / 2 + k * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    draw.polygon(points, fill=fill)
