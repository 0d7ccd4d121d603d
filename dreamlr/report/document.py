"""A small document model (headings, paragraphs, lists, tables, images) rendered as markdown and as one
self-contained HTML page (images embedded as base64 data URIs; no scripts, fonts or network).

Text may use `**bold**` and `` `code` ``; both renderers understand them.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass
from pathlib import Path

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


Block = Heading | Paragraph | Bullets | TableBlock | Picture

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .3rem; } h2 { font-size: 1.3rem; margin-top: 2rem;
     border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; } h3 { font-size: 1.1rem; }
div.table { overflow-x: auto; margin: .6rem 0; }
table { border-collapse: collapse; font-size: .85rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: .25rem .45rem; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; white-space: normal; vertical-align: bottom; }
td:first-child, th:first-child { text-align: left; }
td.best { font-weight: 700; background: #dafbe1; }
tr.scale td { font-style: italic; color: #57606a; background: #fafbfc; }
p.caption { font-size: .85rem; color: #57606a; margin-top: 0; }
code { background: #f6f8fa; padding: 0 .25rem; border-radius: 3px; }
img { max-width: 100%; height: auto; display: block; margin: .5rem 0; }
"""


def to_markdown_text(blocks: list[Block], base: Path) -> str:
    """The document as GitHub markdown; image paths relative to `base` (the markdown file's folder)."""
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Bullets):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, TableBlock):
            parts.append(to_markdown(block.table).rstrip() + (f"\n\n{block.caption}" if block.caption else ""))
        elif isinstance(block, Picture):
            parts.append(f"![{block.alt}]({Path(os.path.relpath(block.path, base)).as_posix()})")
    return "\n\n".join(parts) + "\n"


def to_html_page(blocks: list[Block], title: str) -> str:
    """The document as one HTML page that needs nothing but itself."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, TableBlock):
            body.append(f'<div class="table">{to_html(block.table)}</div>')
            if block.caption:
                body.append(f'<p class="caption">{_inline(block.caption)}</p>')
        elif isinstance(block, Picture):
            body.append(f'<img alt="{html.escape(block.alt)}" src="{data_uri(block.path)}">')
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def data_uri(path: Path) -> str:
    """A PNG file as a `data:image/png;base64,…` URI."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _inline(text: str) -> str:
    """Escape, then turn `**bold**` and `` `code` `` into tags."""
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)
