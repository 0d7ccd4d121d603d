"""Image folders and files: listing, reading as RGB (EXIF, 16-bit, transparency), content hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image, ImageOps

from dreamlr.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def image_files(folder: str | os.PathLike, kind: str) -> list[Path]:
    """The image files in `folder`, sorted by name; `kind` names the folder in error messages."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"{kind} folder '{folder}' does not exist")
    paths = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise UserError(f"{kind} folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def read_image(path: str | os.PathLike, kind: str) -> Image.Image:
    """An image as RGB with its EXIF orientation applied (transparency onto white)."""
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{kind} image '{path}': cannot be read as an image ({e}); remove or replace it") from None
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grayscale: scale to 8 bits
        image = image.point(lambda v: v / 256).convert("L")
    if image.has_transparency_data:
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")
