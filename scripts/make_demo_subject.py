"""Render a small, deterministic demo subject for the offline DreamBooth quickstart.

The subject is a toy mug with red-and-yellow stripes, a blue handle and a white
star, drawn from several azimuths, scales, positions and slight perspectives on
varied backgrounds. Needs only Pillow and numpy; no network access.

Usage: python scripts/make_demo_subject.py [--output DIR] [--size 128] [--views 6]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SS = 4  # supersampling factor
RED, YELLOW, BLUE, WHITE = (214, 40, 40), (250, 200, 30), (30, 90, 200), (255, 255, 255)
PALETTE = [(200, 220, 205), (190, 205, 230), (235, 225, 205),
           (120, 140, 130), (215, 200, 225), (170, 175, 185)]


Point = tuple[float, float]


def ellipse_pts(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float) -> list[Point]:
    return [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in np.linspace(a0, a1, 64)]


def star_pts(cx: float, cy: float, r: float, squash: float) -> list[Point]:
    pts = []
    for k in range(10):
        t = -math.pi / 2 + k * math.pi / 5
        rr = r if k % 2 == 0 else r * 0.42
        pts.append((cx + rr * math.cos(t) * squash, cy + rr * math.sin(t)))
    return pts


def draw_mug(s: int, azimuth: float) -> Image.Image:
    """Draw the mug on a transparent s*s canvas; azimuth (degrees) turns it about its axis."""
    layer = Image.new("RGBA", (s, s), (0, 0, 0, 0))
    d = ImageDraw.Draw(layer)
    cx, rx, ry, top, bot = s * 0.45, s * 0.24, s * 0.06, s * 0.25, s * 0.78
    d.ellipse((cx - rx * 1.3, bot - ry * 0.9, cx + rx * 1.3, bot + ry * 1.5), fill=(0, 0, 0, 90))
    layer = layer.filter(ImageFilter.GaussianBlur(s * 0.02))
    d = ImageDraw.Draw(layer)
    a = math.radians(azimuth)
    hx, hdepth = cx + math.sin(a + math.pi / 2) * rx, math.cos(a + math.pi / 2)
    hw, hh = s * 0.05 + s * 0.11 * abs(math.sin(a + math.pi / 2)), s * 0.17
    handle_box = (hx - hw, (top + bot) / 2 - hh, hx + hw, (top + bot) / 2 + hh)
    if hdepth < 0:
        d.arc(handle_box, -90, 90, fill=BLUE, width=int(s * 0.045))
    # Body: stripes bounded by curved (lower half-ellipse) edges, masked to the cylinder.
    body = Image.new("RGBA", (s, s), RED)
    bd = ImageDraw.Draw(body)
    n_bands = 7
    for k in range(n_bands):
        y = top + (bot - top) * k / n_bands
        bd.polygon(ellipse_pts(cx, y, rx, ry, 0, math.pi)[::-1] + [(cx + rx, s), (cx - rx, s)],
                   fill=YELLOW if k % 2 else RED)
    shade = 0.55 + 0.45 * np.clip(np.cos(np.linspace(-1.5, 1.5, s) + 0.35), 0, 1)
    arr = np.asarray(body).astype(np.float32)
    arr[..., :3] *= shade[None, :, None]
    body = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    mask = Image.new("L", (s, s), 0)
    md = ImageDraw.Draw(mask)
    md.rectangle((cx - rx, top, cx + rx, bot), fill=255)
    md.ellipse((cx - rx, bot - ry, cx + rx, bot + ry), fill=255)
    layer.paste(body, (0, 0), mask)
    rim = (cx - rx, top - ry, cx + rx, top + ry)
    d.ellipse(rim, fill=(110, 20, 20), outline=YELLOW, width=int(s * 0.015))
    if math.cos(a) > 0.15:
        sx = cx + math.sin(a) * rx * 0.8
        d.polygon(star_pts(sx, (top + bot) / 2, s * 0.1, math.cos(a)), fill=WHITE)
    if hdepth >= 0:
        d.arc(handle_box, -90, 90, fill=BLUE, width=int(s * 0.045))
    return layer


def background(kind: int, s: int, c1: tuple[int, ...], c2: tuple[int, ...]) -> Image.Image:
    yy, xx = np.mgrid[0:s, 0:s] / s
    if kind == 0:
        t = np.zeros((s, s))
    elif kind == 1:
        t = yy
    elif kind == 2:
        t = ((xx * 8).astype(int) + (yy * 8).astype(int)) % 2 * 0.35
    elif kind == 3:
        t = (yy > 0.62) + (np.abs(yy - 0.62) < 0.006) * 0.5
    elif kind == 4:
        t = ((xx + yy) * 10).astype(int) % 2 * 0.3
    else:
        t = np.hypot(xx - 0.5, yy - 0.4) * 1.4
    t = np.clip(t, 0, 1)[..., None]
    rgb = np.array(c1) * (1 - t) + np.array(c2) * t
    return Image.fromarray(rgb.astype(np.uint8)).convert("RGBA")


def render_view(i: int, n: int, size: int, rng: np.random.Generator) -> Image.Image:
    s = size * SS
    azimuth = -35 + 70 * i / max(n - 1, 1)
    mug = draw_mug(s, azimuth)
    scale, rot, shear = rng.uniform(0.75, 1.05), rng.uniform(-10, 10), rng.uniform(-0.12, 0.12)
    persp = rng.uniform(-0.15, 0.15, 2) / s
    ca, sa = math.cos(math.radians(rot)) / scale, math.sin(math.radians(rot)) / scale
    dx, dy = rng.uniform(-0.1, 0.1, 2) * s
    # Inverse mapping (output -> input) about the canvas centre, with mild perspective.
    a, b, d, e = ca, sa + shear / scale, -sa, ca
    c = s / 2 - a * (s / 2 + dx) - b * (s / 2 + dy)
    f = s / 2 - d * (s / 2 + dx) - e * (s / 2 + dy)
    mug = mug.transform((s, s), Image.Transform.PERSPECTIVE, (a, b, c, d, e, f, *persp),
                        Image.Resampling.BICUBIC)
    c1, c2 = (PALETTE[j] for j in rng.choice(len(PALETTE), 2, replace=False))
    img = Image.alpha_composite(background(i % 6, s, c1, c2), mug)
    return img.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def save_atomic(img: Image.Image | str, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(img, str):
        tmp.write_text(img)
    else:
        img.save(tmp, format="PNG", optimize=True)
    os.replace(tmp, path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, default=Path("assets/demo_subject"))
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--views", type=int, default=6)
    args = p.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(args.views):
        save_atomic(render_view(i, args.views, args.size, rng), args.output / f"{i:02d}.png")
    license_text = ("The images in this directory were generated by scripts/make_demo_subject.py.\n"
                    "They are dedicated to the public domain under CC0 1.0 "
                    "(https://creativecommons.org/publicdomain/zero/1.0/).\n")
    save_atomic(license_text, args.output / "LICENSE.txt")


if __name__ == "__main__":
    main()
