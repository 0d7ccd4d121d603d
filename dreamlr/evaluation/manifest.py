"""`manifest.jsonl`: one JSON line per generated image, written by `dreamlr generate`, read by `dreamlr score`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from dreamlr.errors import UserError
from dreamlr.fileio import write_text

MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True)
class ManifestEntry:
    """One generated image and everything needed to make it again.

    `file` is relative to the manifest's folder; `prompt_clean` is the prompt without the rare
    token (what CLIP-T compares against); `adapter` lists `{"path", "weight", "sha256"}` per adapter
    used (empty for the base model); `settings` holds the sampling settings.
    """

    file: str
    prompt: str
    prompt_clean: str
    seed: int
    model: str
    prompt_index: int = 0
    image_index: int = 0
    adapter: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)


_REQUIRED = ("file", "prompt", "prompt_clean", "seed", "model")
_KNOWN = {f.name for f in fields(ManifestEntry)}
_TYPES = {"file": (str,), "prompt": (str,), "prompt_clean": (str,), "seed": (int,), "model": (str,),
          "prompt_index": (int,), "image_index": (int,), "adapter": (list,), "settings": (dict,)}


def write_manifest(path: str | os.PathLike, entries: list[ManifestEntry]) -> Path:
    """Write the entries as JSON lines, atomically."""
    lines = [json.dumps(asdict(entry), ensure_ascii=False) for entry in entries]
    return write_text(path, "".join(line + "\n" for line in lines))


def read_manifest(folder: str | os.PathLike) -> list[ManifestEntry]:
    """The entries of `folder/manifest.jsonl`; a missing, empty or malformed manifest is a UserError."""
    folder = Path(folder).expanduser()
    if folder.is_file():
        raise UserError(f"generated folder '{folder}' is a file; give the folder `dreamlr generate` wrote")
    if not folder.is_dir():
        raise UserError(f"generated folder '{folder}' does not exist")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"generated folder '{folder}' has no {MANIFEST_NAME}; score a folder written by "
                        "`dreamlr generate`")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"'{path}' cannot be read as UTF-8 text ({e})") from None
    entries = [_parse_line(path, number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not entries:
        raise UserError(f"'{path}' lists no images; generate again with `dreamlr generate`")
    return entries


def _parse_line(path: Path, number: int, line: str) -> ManifestEntry:
    where = f"'{path}' line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where} is not valid JSON ({e.msg}); the manifest is damaged") from None
    if not isinstance(record, dict):
        raise UserError(f"{where} is not a JSON object; the manifest is damaged")
    missing = [key for key in _REQUIRED if key not in record]
    if missing:
        raise UserError(f"{where} has no {', '.join(repr(k) for k in missing)}; the manifest is damaged")
    for key, kinds in _TYPES.items():
        value = record.get(key, kinds[0]())
        if not isinstance(value, kinds) or (int in kinds and isinstance(value, bool)):
            raise UserError(f"{where}: {key!r} must be {' or '.join(k.__name__ for k in kinds)}, not {value!r}; "
                            "the manifest is damaged")
    entry = ManifestEntry(**{key: value for key, value in record.items() if key in _KNOWN})
    if not isinstance(entry.file, str) or Path(entry.file).is_absolute() or ".." in Path(entry.file).parts:
        raise UserError(f"{where}: 'file' must be a path inside the manifest's folder, not {entry.file!r}")
    return entry
