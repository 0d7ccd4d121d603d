"""A small document model (headings, paragraphs, lists, tables, images, image galleries) rendered as markdown
and as one self-contained HTML page (images embedded as base64 data URIs; no scripts, fonts or network).

The page has a table of contents, a viewport tag and a narrow-window layout (tables scroll under a fixed run
column; figures keep a legible width and scroll), follows the system's dark mode, and enlarges any image
on a click (a checkbox and CSS, no script). Gallery images carry their hover text as a tooltip.

Text may use `**bold**` and `` `code` ``; both renderers understand them.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from dreamlr.report.tables import Table, to_html, to_markdown


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class TableBlock:
    table: Table
    caption: str = ""


@dataclass(frozen=True)
class Picture:
    path: Path
    alt: str


@dataclass(frozen=True)
class Gallery:
    """Lines of small images (a title, then (file, hover text) pairs), under a caption."""

    caption: str
    rows: list[tuple[str, list[tuple[Path, str]]]]


Block = Heading | Paragraph | Bullets | TableBlock | Picture | Gallery
THUMBNAIL = 256  # longest side of a gallery image embedded in the page, in pixels

STYLE = """
:root { color-scheme: light dark; --fg: #1f2328; --muted: #57606a; --bg: #ffffff; --soft: #f6f8fa;
        --line: #d0d7de; --best: #dafbe1; --scale: #fafbfc; --link: #0969da; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6edf3; --muted: #9198a1; --bg: #0d1117; --soft: #161b22; --line: #3d444d; --best: #1b4721;
          --scale: #12161c; --link: #4493f8; }
}
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: var(--fg); background: var(--bg); line-height: 1.45; }
a { color: var(--link); }
h1 { font-size: 1.7rem; margin-bottom: .3rem; } h2 { font-size: 1.3rem; margin-top: 2rem;
     border-bottom: 1px solid var(--line); padding-bottom: .2rem; } h3 { font-size: 1.1rem; }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: .4rem 1rem;
          font-size: .9rem; } nav.toc ul { margin: .2rem 0; padding-left: 1.2rem; columns: 2; }
div.table { overflow-x: auto; margin: .6rem 0; }
table { border-collapse: collapse; font-size: .85rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: .25rem .45rem; text-align: right; white-space: nowrap;
         background: var(--bg); }
th { background: var(--soft); white-space: normal; vertical-align: bottom; }
td:first-child, th:first-child { text-align: left; position: sticky; left: 0; z-index: 1; }
td.best { font-weight: 700; background: var(--best); }
tr.scale td { font-style: italic; color: var(--muted); background: var(--scale); }
p.caption { font-size: .85rem; color: var(--muted); margin-top: 0; }
code { background: var(--soft); padding: 0 .25rem; border-radius: 3px; overflow-wrap: anywhere; }
div.figure { overflow-x: auto; margin: .5rem 0; }
img { max-width: 100%; height: auto; display: block; background: #fff; }
label.zoom { cursor: zoom-in; display: inline-block; }
label.zoom input { display: none; }
label.zoom input:checked + img { position: fixed; inset: 0; margin: auto; width: auto; height: auto;
  max-width: 96vw; max-height: 96vh; min-width: min(96vw, 512px); object-fit: contain; z-index: 10;
  cursor: zoom-out; box-shadow: 0 0 0 100vmax rgba(0, 0, 0, .85); }
div.gallery { margin: .3rem 0 1rem; }
div.gallery p { margin: .2rem 0; font-size: .9rem; }
div.line { display: flex; align-items: center; gap: .4rem; margin: .2rem 0; }
div.line span { flex: 0 0 9rem; font-size: .8rem; overflow-wrap: anywhere; }
div.thumbs { display: flex; flex-wrap: wrap; gap: .25rem; }
div.thumbs img { width: 128px; max-width: 28vw; }
@media (max-width: 700px) {
  body { margin: .6rem auto; padding: 0 .5rem; font-size: 15px; }
  h1 { font-size: 1.35rem; } nav.toc ul { columns: 1; }
  div.figure img { max-width: none; width: 680px; }
  div.line { flex-direction: column; align-items: flex-start; }
  div.line span { flex: none; }
}
"""


def to_markdown_text(blocks: list[Block], base: Path) -> str:
    """The document as GitHub markdown; image paths relative to `base` (the markdown file's folder)."""
    parts = []
    toc = "\n".join(f"- [{text}](#{anchor})" for anchor, text in contents(blocks))
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
            if block.level == 1 and toc:
                parts.append("Contents:\n\n" + toc)
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, TableBlock):
            parts.append(to_markdown(block.table).rstrip() + (f"\n\n{block.caption}" if block.caption else ""))
        elif isinstance(block, Picture):
            parts.append(f"![{block.alt}]({_relative(block.path, base)})")
        elif isinstance(block, Gallery):
            parts.append(f"{block.caption}\n\n" + "\n".join(
                f"- {title}: " + " ".join(f'![{html.escape(hover)}]({_relative(path, base)} "{hover}")'
                                          for path, hover in items) for title, items in block.rows))
    return "\n\n".join(parts) + "\n"


def _relative(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path, base)).as_posix()


def contents(blocks: list[Block]) -> list[tuple[str, str]]:
    """(anchor, text) of every second-level heading, in order; anchors are unique."""
    out, seen = [], set()
    for block in blocks:
        if isinstance(block, Heading) and block.level == 2:
            out.append((_anchor(block.text, seen), block.text))
    return out


def _anchor(text: str, seen: set[str]) -> str:
    base = re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-") or "section"
    anchor, n = base, 1
    while anchor in seen:
        n += 1
        anchor = f"{base}-{n}"
    seen.add(anchor)
    return anchor


def to_html_page(blocks: list[Block], title: str) -> str:
    """The document as one HTML page that needs nothing but itself."""
    body = []
    anchors = iter(contents(blocks))
    toc = "".join(f'<li><a href="#{anchor}">{_inline(text)}</a></li>' for anchor, text in contents(blocks))
    for block in blocks:
        if isinstance(block, Heading) and block.level == 2:
            body.append(f'<h2 id="{next(anchors)[0]}">{_inline(block.text)}</h2>')
        elif isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
            if block.level == 1 and toc:
                body.append(f'<nav class="toc"><strong>Contents</strong><ul>{toc}</ul></nav>')
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, TableBlock):
            body.append(f'<div class="table">{to_html(block.table)}</div>')
            if block.caption:
                body.append(f'<p class="caption">{_inline(block.caption)}</p>')
        elif isinstance(block, Picture):
            body.append(f'<div class="figure">{_zoomable(data_uri(block.path), block.alt)}</div>')
        elif isinstance(block, Gallery):
            lines = "".join(f'<div class="line"><span>{_inline(name)}</span><div class="thumbs">'
                            + "".join(_zoomable(thumbnail_uri(path), hover, hover) for path, hover in items)
                            + "</div></div>" for name, items in block.rows)
            body.append(f'<div class="gallery"><p>{_inline(block.caption)}</p>{lines}</div>')
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def data_uri(path: Path) -> str:
    """A PNG file as a `data:image/png;base64,…` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def thumbnail_uri(path: Path) -> str:
    """An image file, at most THUMBNAIL pixels on its longest side, as a PNG data URI."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _zoomable(source: str, alt: str, hover: str = "") -> str:
    """An image that a click enlarges (and a second click shrinks back)."""
    tip = f' title="{html.escape(hover)}"' if hover else ""
    return f'<label class="zoom"><input type="checkbox"><img alt="{html.escape(alt)}"{tip} src="{source}"></label>'


def _inline(text: str) -> str:
    """Escape, then turn `**bold**` and `` `code` `` into tags."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)
