"""The eight object classes as drawn shapes.

Each drawer paints, on a square canvas of side S (the object upright, its base on the bottom edge), the body
into a mask (`body`, filled later with the instance's colour and pattern) and fixed details (eyes, wheels,
windows…) onto an RGBA overlay (`detail`); live classes return their head box, where accessories go."""

from __future__ import annotations

from collections.abc import Callable

from PIL import ImageDraw

Box = tuple[float, float, float, float]
DARK = (30, 30, 30, 255)
GLASS = (170, 215, 240, 255)
WHITE = (245, 245, 245, 255)


def _s(S: int, *values: float) -> tuple[float, ...]:
    """Fractions of the canvas side -> pixels."""
    return tuple(v * S for v in values)


def draw_mug(body: ImageDraw.ImageDraw, detail: ImageDraw.ImageDraw, S: int) -> Box | None:
    body.rectangle(_s(S, 0.22, 0.3, 0.66, 1.0))
    body.ellipse(_s(S, 0.22, 0.24, 0.66, 0.36))
    body.ellipse(_s(S, 0.56, 0.42, 0.86, 0.82), width=round(0.07 * S))  # handle ring
    detail.ellipse(_s(S, 0.26, 0.26, 0.62, 0.34), fill=(60, 40, 30, 255))  # coffee seen over the rim
    return None


def draw_teapot(body: ImageDraw.ImageDraw, detail: ImageDraw.ImageDraw, S: int) -> Box | None:
    body.ellipse(_s(S, 0.2, 0.38, 0.8, 1.0))
    body.polygon(_s(S, 0.26, 0.66, 0.04, 0.42, 0.0, 0.44, 0.2, 0.82))  # spout
    body.ellipse(_s(S, 0.7, 0.48, 0.98, 0.84), width=round(0.06 * S))  # handle
    body.ellipse(_s(S, 0.36, 0.3, 0.64, 0.44))  # lid
    detail.ellipse(_s(S, 0.45, 0.22, 0.55, 0.32), fill=DARK)  # knob
    return None


def draw_backpack(body: ImageDraw.ImageDraw, detail: ImageDraw.ImageDraw, S: int) -> Box | None:
    body.rounded_rectangle(_s(S, 0.18, 0.2, 0.82, 1.0), radius=0.16 * S)
    body.arc(_s(S, 0.38, 0.06, 0.62, 0.3), 180, 360, width=round(0.05 * S))  # top handle
    detail.rounded_rectangle(_s(S, 0.3, 0.6, 0.7, 0.92), radius=0.06 * S, outline=DARK, width=round(0.025 * S))
    detail.line(_s(S, 0.3, 0.68, 0.7, 0.68), fill=DARK, width=round(0.025 * S))  # pocket zip
    detail.rectangle(_s(S, 0.47, 0.66, 0.53, 0.72), fill=(200, 200, 200, 255))
    return None


def draw_vase(body: ImageDraw.ImageDraw, detail: ImageDraw.ImageDraw, S: int) -> Box | None:
    body.ellipse(_s(S, 0.2, 0.38, 0.8, 1.0))
    body.rectangle(_s(S, 0.4, 0.08, 0.6, 0.5))  # neck
    body.polygon(_s(S, 0.32, 0.02, 0.68, 0.02, 0.6, 0.12, 0.4, 0.12))  # flared lip
    detail.ellipse(_s(S, 0.38, 0.0, 0.62, 0.05), fill=DARK)  # the opening
    return None


def draw_toy_car(body: ImageDraw.ImageDraw, detail: ImageDraw.ImageDraw, S: int) -> Box | None:
    body.rounded_rectangle(_s(S, 0.02, 0.52, 0.98, 0.86), radius=0.06 * S)
    body.polygon(_s(S, 0.22, 0.54, 0.32, 0.3, 0.7, 0.3, 0.82, 0.54))  # cabin
    detail.polygon(_s(S, 0.29, 0.52, 0.36, 0.35, 0.49, 0.35, 0.49, 0.52), fill=GLASS)
    detail.polygon(_s(S, 0.53, 0.52, 0.53, 0.35, 0.66, 0.35, 0.74, 0.52), fill=GLASS)
    for cx in (0.24, 0.76):
        detail.ellipse(_s(S, cx - 0.13, 0.74, cx + 0.13, 1.0), fill=DARK)
        detail.ellipse(_s(S, cx - 0.05, 0.82, cx + 0.05, 0.92), fill=(190, 190, 190, 255))
    detail.ellipse(_s(S, 0.9, 0.58, 0.97, 0.66), fill=(255, 240, 120, 255))  # headlight
    return None


def draw_robot_toy(body: ImageDraw.ImageDraw, detail: ImageDraw.ImageDraw, S: int) -> Box | None:
    body.rectangle(_s(S, 0.3, 0.1, 0.7, 0.38))  # head
    body.rectangle(_s(S, 0.25, 0.42, 0.75, 0.78))  # torso
    body.rectangle(_s(S, 0.1, 0.44, 0.22, 0.72))  # arms
    body.rectangle(_s(S, 0.78, 0.44, 0.9, 0.72))
    body.rectangle(_s(S, 0.3, 0.78, 0.44, 1.0))  # legs
    body.rectangle(_s(S, 0.56, 0.78, 0.7, 1.0))
    detail.rectangle(_s(S, 0.46, 0.38, 0.54, 0.42), fill=(120, 120, 120, 255))  # neck
    detail.line(_s(S, 0.5, 0.1, 0.5, 0.02), fill=DARK, width=round(0.02 * S))  # antenna
    detail.ellipse(_s(S, 0.46, 0.0, 0.54, 0.05), fill=(230, 40, 40, 255))
    for cx in (0.41, 0.59):
        detail.ellipse(_s(S, cx - 0.05, 0.18, cx + 0.05, 0.28), fill=(255, 240, 120, 255), outline=DARK)
    detail.rectangle(_s(S, 0.4, 0.31, 0.6, 0.34), fill=DARK)  # mouth
    detail.rectangle(_s(S, 0.38, 0.52, 0.62, 0.66), fill=(200, 200, 210, 255), outline=DARK)  # chest panel
    return None


def _animal(body: ImageDraw.ImageDraw, detail: ImageDraw.ImageDraw, S: int, cat: bool) -> Box:
    """A side-view quadruped, facing right: body, legs, tail, head; cats get pointed ears and whiskers."""
    body.ellipse(_s(S, 0.1, 0.44, 0.74, 0.82))
    for x in (0.16, 0.3, 0.52, 0.64):
        body.rectangle(_s(S, x, 0.7, x + 0.08, 1.0))
    head = _s(S, 0.58, 0.2, 0.94, 0.56)
    body.ellipse(head)
    if cat:
        body.polygon(_s(S, 0.6, 0.32, 0.64, 0.08, 0.74, 0.24))
        body.polygon(_s(S, 0.78, 0.24, 0.88, 0.08, 0.92, 0.32))
        body.line(_s(S, 0.12, 0.56, 0.04, 0.4, 0.06, 0.2), width=round(0.04 * S), joint="curve")  # tail up
        for dy in (-0.02, 0.02):
            detail.line(_s(S, 0.86, 0.44 + dy, 0.99, 0.42 + 2 * dy), fill=DARK, width=1)
    else:
        body.rounded_rectangle(_s(S, 0.8, 0.36, 1.0, 0.52), radius=0.05 * S)  # snout
        body.line(_s(S, 0.12, 0.54, 0.02, 0.44), width=round(0.05 * S))  # tail
        detail.ellipse(_s(S, 0.6, 0.22, 0.72, 0.46), fill=(70, 45, 25, 255))  # floppy ear
        detail.ellipse(_s(S, 0.94, 0.36, 1.0, 0.42), fill=DARK)  # nose
    detail.ellipse(_s(S, 0.78, 0.3, 0.84, 0.36), fill=DARK)  # eye
    return head


def draw_dog(body: ImageDraw.ImageDraw, detail: ImageDraw.ImageDraw, S: int) -> Box | None:
    return _animal(body, detail, S, cat=False)


def draw_cat(body: ImageDraw.ImageDraw, detail: ImageDraw.ImageDraw, S: int) -> Box | None:
    return _animal(body, detail, S, cat=True)


DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, ImageDraw.ImageDraw, int], Box | None]] = {
    "mug": draw_mug,
    "teapot": draw_teapot,
    "backpack": draw_backpack,
    "vase": draw_vase,
    "toy_car": draw_toy_car,
    "robot_toy": draw_robot_toy,
    "dog": draw_dog,
    "cat": draw_cat,
}
