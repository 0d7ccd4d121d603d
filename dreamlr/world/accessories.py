"""What live subjects wear (hats, scarf, glasses, shirt), drawn relative to the head box the animal drawer
returns, on the object's RGBA overlay."""

from __future__ import annotations

from PIL import ImageDraw

from dreamlr.world.objects import Box


def draw_accessory(name: str, d: ImageDraw.ImageDraw, head: Box, S: int) -> None:
    """Draw accessory `name` (a key of `vocab.ACCESSORIES`) for an animal whose head occupies `head`."""
    x0, y0, x1, y1 = head
    w, cx = x1 - x0, (x0 + x1) / 2
    brim = (x0 - 0.1 * w, y0 + 0.02 * w, x1 + 0.1 * w, y0 + 0.16 * w)
    if name == "red_hat":
        d.pieslice((x0, y0 - 0.45 * w, x1, y0 + 0.45 * w), 180, 360, fill=(210, 30, 30, 255))
        d.rectangle(brim, fill=(170, 20, 20, 255))
    elif name == "santa_hat":
        d.polygon((x0, y0 + 0.1 * w, x1, y0 + 0.1 * w, cx + 0.35 * w, y0 - 0.6 * w), fill=(210, 30, 30, 255))
        d.rectangle(brim, fill=(250, 250, 250, 255))
        d.ellipse((cx + 0.25 * w, y0 - 0.7 * w, cx + 0.45 * w, y0 - 0.5 * w), fill=(250, 250, 250, 255))
    elif name == "top_hat":
        d.rectangle((x0 + 0.15 * w, y0 - 0.6 * w, x1 - 0.15 * w, y0 + 0.08 * w), fill=(20, 20, 20, 255))
        d.rectangle(brim, fill=(20, 20, 20, 255))
        d.rectangle((x0 + 0.15 * w, y0 - 0.12 * w, x1 - 0.15 * w, y0 - 0.02 * w), fill=(150, 20, 20, 255))
    elif name == "chef_hat":
        d.rectangle((x0 + 0.15 * w, y0 - 0.35 * w, x1 - 0.15 * w, y0 + 0.1 * w), fill=(250, 250, 250, 255))
        for k in (-0.22, 0.0, 0.22):
            d.ellipse((cx + (k - 0.2) * w, y0 - 0.6 * w, cx + (k + 0.2) * w, y0 - 0.2 * w), fill=(250, 250, 250, 255))
    elif name == "firefighter_helmet":
        d.pieslice((x0, y0 - 0.4 * w, x1, y0 + 0.4 * w), 180, 360, fill=(240, 200, 20, 255))
        d.rectangle((x0 - 0.2 * w, y0 - 0.02 * w, x1 + 0.05 * w, y0 + 0.08 * w), fill=(200, 160, 10, 255))
    elif name == "police_cap":
        d.rectangle((x0 + 0.05 * w, y0 - 0.3 * w, x1 - 0.05 * w, y0 + 0.06 * w), fill=(25, 40, 110, 255))
        d.rectangle((x1 - 0.25 * w, y0 + 0.02 * w, x1 + 0.2 * w, y0 + 0.12 * w), fill=(15, 15, 15, 255))
        d.ellipse((cx - 0.08 * w, y0 - 0.2 * w, cx + 0.08 * w, y0 - 0.04 * w), fill=(240, 200, 40, 255))
    elif name == "wizard_hat":
        d.polygon((x0 - 0.05 * w, y0 + 0.1 * w, x1 + 0.05 * w, y0 + 0.1 * w, cx - 0.1 * w, y0 - 0.9 * w),
                  fill=(120, 40, 170, 255))
        d.ellipse((cx - 0.1 * w, y0 - 0.45 * w, cx + 0.06 * w, y0 - 0.29 * w), fill=(250, 220, 60, 255))
    elif name == "rainbow_scarf":
        band = 0.05 * w
        for k, colour in enumerate(((220, 30, 30), (240, 140, 20), (240, 220, 30), (40, 160, 60), (40, 80, 210))):
            d.rectangle((x0 - 0.05 * w, y1 - 0.1 * w + k * band, x1 - 0.1 * w, y1 - 0.1 * w + (k + 1) * band),
                        fill=(*colour, 255))
    elif name == "pink_glasses":
        ey = y0 + 0.35 * w
        for ex in (cx, cx + 0.32 * w):
            d.ellipse((ex - 0.14 * w, ey - 0.12 * w, ex + 0.14 * w, ey + 0.12 * w), fill=(250, 130, 190, 255),
                      outline=(180, 40, 120, 255), width=2)
    elif name == "yellow_shirt":
        d.rectangle((0.22 * S, 0.46 * S, 0.62 * S, 0.74 * S), fill=(245, 215, 40, 255))
        d.rectangle((0.56 * S, 0.5 * S, 0.72 * S, 0.68 * S), fill=(245, 215, 40, 255))
    else:
        raise KeyError(f"unknown accessory {name!r}")
