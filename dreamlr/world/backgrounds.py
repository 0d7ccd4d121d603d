"""The contexts as drawn backdrops. Each drawer paints a square RGB canvas (side S) with small random
variation from `rng` and returns the height (fraction of S) of the ground line the object stands on."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

Drawer = Callable[[ImageDraw.ImageDraw, int, np.random.Generator], float]

SKY = (150, 200, 245)


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int = 12) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _sky_ground(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator, horizon: float,
                sky: tuple[int, int, int], ground: tuple[int, int, int]) -> None:
    d.rectangle((0, 0, S, horizon * S), fill=_jitter(rng, sky))
    d.rectangle((0, horizon * S, S, S), fill=_jitter(rng, ground))


def studio(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.7, (215, 215, 210), (190, 190, 185))
    return 0.9


def jungle(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.75, (30, 90, 40), (70, 55, 30))
    for _ in range(5):
        x = rng.uniform(0, S)
        d.rectangle((x, 0.2 * S, x + 0.05 * S, 0.8 * S), fill=(80, 55, 25))
    for _ in range(40):
        x, y, r = rng.uniform(0, S), rng.uniform(0, 0.8 * S), rng.uniform(0.04, 0.1) * S
        d.ellipse((x - r, y - r / 2, x + r, y + r / 2), fill=_jitter(rng, (40, 140, 50), 30))
    return 0.92


def snow(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.55, (200, 210, 225), (248, 250, 255))
    d.polygon((0, 0.55 * S, 0.3 * S, 0.3 * S, 0.6 * S, 0.55 * S), fill=(225, 232, 245))
    for _ in range(40):
        x, y = rng.uniform(0, S), rng.uniform(0, S)
        d.ellipse((x - 1.5, y - 1.5, x + 1.5, y + 1.5), fill=(255, 255, 255))
    return 0.9


def beach(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.4, SKY, (235, 210, 150))
    d.rectangle((0, 0.4 * S, S, 0.58 * S), fill=_jitter(rng, (40, 120, 200)))
    d.line((0, 0.58 * S, S, 0.58 * S), fill=(250, 250, 250), width=3)
    x = rng.uniform(0.1, 0.9) * S
    d.ellipse((x - 7, 0.08 * S, x + 7, 0.08 * S + 14), fill=(255, 230, 90))
    return 0.92


def cobblestone(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.45, (170, 150, 130), (110, 110, 110))
    for row in range(8):
        for col in range(9):
            x, y = (col + 0.5 * (row % 2)) * S / 8, 0.45 * S + row * S / 14
            d.ellipse((x, y, x + S / 9, y + S / 16), fill=_jitter(rng, (150, 150, 145), 20), outline=(80, 80, 80))
    return 0.92


def pink_fabric(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    d.rectangle((0, 0, S, S), fill=_jitter(rng, (240, 170, 200)))
    for k in range(8):
        y = k * S / 7 + rng.uniform(-4, 4)
        d.arc((-S * 0.2, y - 10, S * 1.2, y + 10), 0, 180, fill=(215, 135, 170), width=3)
    return 0.92


def wooden_floor(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.5, (225, 215, 190), (165, 110, 60))
    for k in range(7):
        y = 0.5 * S + k * S / 14
        d.line((0, y, S, y), fill=(120, 75, 35), width=2)
    return 0.92


def city(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.7, SKY, (90, 90, 95))
    x = 0.0
    while x < S:
        w, h = rng.uniform(0.1, 0.2) * S, rng.uniform(0.3, 0.65) * S
        d.rectangle((x, 0.7 * S - h, x + w, 0.7 * S), fill=_jitter(rng, (110, 110, 125), 25))
        for wy in np.arange(0.7 * S - h + 4, 0.7 * S - 6, 8):
            for wx in np.arange(x + 3, x + w - 4, 7):
                d.rectangle((wx, wy, wx + 3, wy + 4), fill=(250, 230, 120))
        x += w + 2
    return 0.92


def mountain(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.65, SKY, (90, 160, 70))
    peak = rng.uniform(0.3, 0.7) * S
    d.polygon((peak - 0.55 * S, 0.65 * S, peak, 0.1 * S, peak + 0.55 * S, 0.65 * S), fill=(110, 100, 105))
    d.polygon((peak - 0.14 * S, 0.24 * S, peak, 0.1 * S, peak + 0.14 * S, 0.24 * S), fill=(250, 250, 250))
    return 0.92


def blue_house(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.65, SKY, (90, 170, 70))
    x = rng.uniform(0.05, 0.45) * S
    d.rectangle((x, 0.3 * S, x + 0.5 * S, 0.65 * S), fill=_jitter(rng, (50, 90, 210)))
    d.polygon((x - 0.05 * S, 0.3 * S, x + 0.25 * S, 0.08 * S, x + 0.55 * S, 0.3 * S), fill=(150, 50, 40))
    d.rectangle((x + 0.2 * S, 0.45 * S, x + 0.3 * S, 0.65 * S), fill=(90, 55, 30))
    return 0.92


def purple_rug(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.6, (60, 110, 60), (60, 120, 50))
    for _ in range(6):
        x = rng.uniform(0, S)
        d.polygon((x - 12, 0.6 * S, x, 0.05 * S, x + 12, 0.6 * S), fill=_jitter(rng, (30, 90, 40), 20))
    d.ellipse((0.05 * S, 0.7 * S, 0.95 * S, 1.05 * S), fill=_jitter(rng, (130, 50, 170)))
    return 0.9


def wheat_field(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.45, SKY, (220, 180, 80))
    for _ in range(120):
        x, y = rng.uniform(0, S), rng.uniform(0.45, 1.0) * S
        d.line((x, y, x + rng.uniform(-2, 2), y - 8), fill=(190, 145, 50), width=1)
    return 0.93


def autumn_tree(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.7, SKY, (150, 120, 70))
    x = rng.uniform(0.2, 0.8) * S
    d.rectangle((x - 5, 0.3 * S, x + 5, 0.7 * S), fill=(90, 55, 25))
    for _ in range(40):
        cx, cy, r = x + rng.normal(0, 0.18 * S), rng.uniform(0.05, 0.4) * S, rng.uniform(4, 9)
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_jitter(rng, (220, 100, 30), 35))
    for _ in range(25):
        lx, ly = rng.uniform(0, S), rng.uniform(0.72, 1.0) * S
        d.ellipse((lx - 3, ly - 2, lx + 3, ly + 2), fill=_jitter(rng, (200, 80, 30), 40))
    return 0.93


def water(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.4, SKY, (30, 100, 180))
    for k in range(10):
        y = 0.45 * S + k * S / 18
        x0 = rng.uniform(-10, 10)
        d.line([(x0 + j * 8, y + (2 if j % 2 else -2)) for j in range(20)], fill=(120, 180, 235), width=2)
    return 0.8


def sunflowers(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.5, SKY, (70, 170, 60))
    for _ in range(9):
        x, y = rng.uniform(0, S), rng.uniform(0.45, 0.95) * S
        d.line((x, y, x, y + 14), fill=(40, 110, 40), width=2)
        d.ellipse((x - 7, y - 7, x + 7, y + 7), fill=(250, 205, 30))
        d.ellipse((x - 3, y - 3, x + 3, y + 3), fill=(100, 60, 20))
    return 0.93


def dirt_road(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.5, SKY, (90, 160, 70))
    d.polygon((0.42 * S, 0.5 * S, 0.58 * S, 0.5 * S, 1.0 * S, S, 0.0, S), fill=_jitter(rng, (150, 110, 70)))
    for _ in range(20):
        x, y = rng.uniform(0.2, 0.8) * S, rng.uniform(0.6, 1.0) * S
        d.ellipse((x - 1.5, y - 1, x + 1.5, y + 1), fill=(110, 80, 50))
    return 0.93


def white_rug(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.5, (200, 190, 175), (150, 105, 60))
    d.rounded_rectangle((0.05 * S, 0.62 * S, 0.95 * S, 1.02 * S), radius=10, fill=_jitter(rng, (245, 245, 240), 6))
    for k in range(12):
        x = 0.08 * S + k * 0.076 * S
        d.line((x, 0.62 * S, x, 0.58 * S), fill=(235, 235, 230), width=2)  # fringe
    return 0.9


def table(d: ImageDraw.ImageDraw, S: int, rng: np.random.Generator) -> float:
    _sky_ground(d, S, rng, 0.55, (200, 210, 200), (190, 130, 70))
    d.rectangle((0, 0.55 * S, S, 0.6 * S), fill=(140, 90, 45))
    for k in range(4):
        y = 0.65 * S + k * S / 10
        d.arc((-20, y, S + 20, y + 12), 0, 180, fill=(160, 105, 55), width=2)
    return 0.92


DRAWERS: dict[str, Drawer] = {
    "studio": studio,
    "jungle": jungle,
    "snow": snow,
    "beach": beach,
    "cobblestone": cobblestone,
    "pink_fabric": pink_fabric,
    "wooden_floor": wooden_floor,
    "city": city,
    "mountain": mountain,
    "blue_house": blue_house,
    "purple_rug": purple_rug,
    "wheat_field": wheat_field,
    "autumn_tree": autumn_tree,
    "water": water,
    "sunflowers": sunflowers,
    "dirt_road": dirt_road,
    "white_rug": white_rug,
    "table": table,
}


def background(context: str, size: int, rng: np.random.Generator) -> tuple[Image.Image, float]:
    """The context's backdrop (RGB, `size` square) and its ground line (fraction of the height)."""
    image = Image.new("RGB", (size, size))
    ground = DRAWERS[context](ImageDraw.Draw(image), size, rng)
    return image, ground
