"""A world scene (an object instance, its pose and its context) and how it renders to a 64 px RGB image.

Rendering is deterministic: the same `Scene` gives the same pixels (the backdrop's small variations come
from `Scene.seed`). Drawing happens at `SUPERSAMPLE`× the output size and is downsampled, for anti-aliasing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from dreamlr.world.accessories import draw_accessory
from dreamlr.world.backgrounds import background
from dreamlr.world.objects import DRAWERS
from dreamlr.world.patterns import pattern_image
from dreamlr.world.vocab import ACCESSORIES, CLASSES, COLOURS, CONTEXTS, FINISHES, PATTERNS, SIZES

IMAGE_SIZE = 64
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Instance:
    """What makes one object that object: class, body colour, pattern and the pattern's ink colour."""

    cls: str
    colour: str
    pattern: str = "plain"
    ink: str = "white"

    def __post_init__(self) -> None:
        for value, table, what in ((self.cls, CLASSES, "class"), (self.colour, COLOURS, "colour"),
                                   (self.pattern, PATTERNS, "pattern"), (self.ink, COLOURS, "ink colour")):
            if value not in table:
                raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(table)}")


@dataclass(frozen=True)
class Scene:
    """An instance in a context, with its pose: size, position (offsets in [-1, 1]), rotation in degrees,
    mirror, surface finish, an accessory for live classes, and the backdrop's variation seed."""

    instance: Instance
    context: str = "studio"
    size: str = "medium"
    x: float = 0.0
    y: float = 0.0
    angle: float = 0.0
    mirror: bool = False
    finish: str = "matte"
    accessory: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.context not in CONTEXTS:
            raise ValueError(f"unknown context {self.context!r}; choose one of {', '.join(CONTEXTS)}")
        if self.size not in SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {', '.join(SIZES)}")
        if self.finish not in FINISHES:
            raise ValueError(f"unknown finish {self.finish!r}; choose one of {', '.join(FINISHES)}")
        if self.accessory is not None and self.accessory not in ACCESSORIES:
            raise ValueError(f"unknown accessory {self.accessory!r}; choose one of {', '.join(ACCESSORIES)}")

    def to_dict(self) -> dict:
        """A JSON-able description (round-trips through `scene_from_dict`)."""
        return asdict(self)


def scene_from_dict(data: dict) -> Scene:
    """The scene `Scene.to_dict` described."""
    data = dict(data)
    return Scene(instance=Instance(**data.pop("instance")), **data)


def draw_object(scene: Scene, side: int) -> Image.Image:
    """The scene's object alone, upright and unposed, as an RGBA image `side` pixels square."""
    inst = scene.instance
    body = Image.new("L", (side, side), 0)
    overlay = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    detail = ImageDraw.Draw(overlay)
    body_draw = ImageDraw.Draw(body)
    head = DRAWERS[inst.cls](_MaskDraw(body_draw), detail, side)
    fill = pattern_image(inst.pattern, COLOURS[inst.colour], COLOURS[inst.ink], side)
    edge = ImageChops.subtract(body.filter(ImageFilter.MaxFilter(3)), body)
    out = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    out.paste(fill, (0, 0), body)
    out.paste(_shade(COLOURS[inst.colour]), (0, 0), edge)
    if scene.finish == "shiny":
        detail.ellipse((0.3 * side, 0.45 * side, 0.42 * side, 0.62 * side), fill=(255, 255, 255, 200))
    elif scene.finish == "wet":
        rng = np.random.default_rng(7)
        for _ in range(14):
            x, y = rng.uniform(0.2, 0.8) * side, rng.uniform(0.3, 0.95) * side
            if body.getpixel((int(x), int(y))):
                detail.ellipse((x - 2, y - 3, x + 2, y + 3), fill=(200, 230, 255, 230))
    if scene.accessory is not None and head is not None:
        draw_accessory(scene.accessory, detail, head, side)
    return Image.alpha_composite(out, overlay)


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene as an RGB image, `size` pixels square."""
    big = size * SUPERSAMPLE
    rng = np.random.default_rng(scene.seed)
    canvas, ground = background(scene.context, big, rng)
    side = round(SIZES[scene.size] * big * 0.75)
    obj = draw_object(scene, side)
    if scene.mirror:
        obj = obj.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if scene.angle:
        obj = obj.rotate(scene.angle, resample=Image.Resampling.BICUBIC, expand=True)
    left = round((big - obj.width) / 2 + scene.x * 0.18 * big)
    top = round(ground * big - obj.height + scene.y * 0.05 * big)
    top = min(max(top, -obj.height // 8), big - obj.height)
    canvas.paste(obj, (left, top), obj)
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def _shade(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """The outline colour for a body colour: darker, or mid grey for black."""
    if max(rgb) < 60:
        return (110, 110, 110)
    return tuple(int(c * 0.45) for c in rgb)


class _MaskDraw:
    """An ImageDraw on an "L" mask whose shapes are filled (or stroked) with 255 unless told otherwise."""

    def __init__(self, draw: ImageDraw.ImageDraw):
        self._draw = draw

    def __getattr__(self, name: str):
        method = getattr(self._draw, name)

        def call(*args, **kwargs):
            if name in ("arc", "line"):
                kwargs.setdefault("fill", 255)
            elif "width" in kwargs and name in ("ellipse", "rectangle", "rounded_rectangle"):
                kwargs.setdefault("outline", 255)  # a ring: stroke only
            else:
                kwargs.setdefault("fill", 255)
            return method(*args, **kwargs)

        return call
