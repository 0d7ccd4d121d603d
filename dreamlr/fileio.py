"""Writing files so that a crash never leaves one half-written: temp name in the same folder, then rename."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from dreamlr.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The folder is resolved first (so `new/../x` never creates `new/`); a link `path` itself is replaced,
    not followed."""
    path = resolve_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes it private; a finished file gets the usual mode
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it becomes `path` (replacing it).

    A `path` that is a symlink is followed: the folder it points to is replaced, the link stays. An old
    `path` is first moved aside (`.NAME.XXXXXXXX.old`), so a crash between the two renames leaves it there,
    and remove_stale_temps puts it back.
    """
    path = resolve_parent(path)
    if path.is_symlink():
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            _remove_entry(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def resolve_parent(path: str | os.PathLike) -> Path:
    """`path` with its folder resolved (links and `..` followed; `missing/../x` is x), its own name kept."""
    path = Path(path).expanduser()
    return Path(os.path.realpath(path.parent)) / path.name


def inside(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """`path` resolved (symlinks and `..` followed); a UserError unless it is `root` (resolved) or lies in it."""
    resolved, base = Path(path).expanduser().resolve(), Path(root).expanduser().resolve()
    if resolved != base and base not in resolved.parents:
        raise UserError(f"refusing to touch '{path}': it resolves to '{resolved}', outside '{base}'")
    return resolved


def check_plain_name(name: str, what: str) -> str:
    """`name` when it is a plain file or folder name (no separators, not `.`/`..`, not empty); else a UserError."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name != name.strip():
        raise UserError(f"{what} {name!r} is not a plain folder name (no '/', '..' or surrounding spaces)")
    return name


def remove(path: str | os.PathLike, root: str | os.PathLike) -> None:
    """Delete the file, link or folder `path` after checking it lies inside `root`; a link is removed, never
    followed."""
    path = Path(path)
    inside(path.parent, root)
    if path.parent.resolve() / path.name == Path(root).expanduser().resolve():
        raise UserError(f"refusing to delete '{path}': it is the folder '{root}' itself")
    _remove_entry(path.parent.resolve() / path.name)


def empty_folder(folder: str | os.PathLike) -> None:
    """Delete everything inside `folder` (links are removed, not followed); the folder itself stays."""
    folder = Path(folder).resolve()
    for entry in folder.iterdir():
        _remove_entry(entry)


def _remove_entry(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def _temp_pattern(name: str | None) -> re.Pattern:
    """The names atomic_path / atomic_dir give their temp files and folders (tempfile's 8 random characters):
    `.NAME.XXXXXXXX.tmp` for what is being written, `.NAME.XXXXXXXX.old` for what it replaces."""
    return re.compile(r"\.(?P<name>" + (re.escape(name) if name is not None else r".+") +
                      r")\.[a-z0-9_]{8}\.(?P<kind>tmp|old)")


def is_temp_name(name: str) -> bool:
    """Whether `name` is one of atomic_path / atomic_dir's temp names."""
    return _temp_pattern(None).fullmatch(name) is not None


def remove_stale_temps(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temp files and folders an interrupted atomic_path / atomic_dir left directly in `folder`
    (those for `name` only, when given); returns what was removed. A replaced folder whose replacement never
    arrived is put back instead. Links and other names are never touched."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = _temp_pattern(name)
    removed = []
    for entry in sorted(folder.iterdir()):
        match = pattern.fullmatch(entry.name)
        if not match or entry.is_symlink():
            continue
        original = folder / match["name"]
        if match["kind"] == "old" and not (original.exists() or original.is_symlink()):
            os.replace(entry, original)
            continue
        _remove_entry(entry)
        removed.append(entry)
    return removed


def cache_root() -> Path:
    """dreamlr's cache folder: `$DREAMLR_CACHE`, else `~/.cache/dreamlr`."""
    return Path(os.environ.get("DREAMLR_CACHE") or Path.home() / ".cache" / "dreamlr").expanduser()


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_yaml(path: str | os.PathLike, data: dict) -> Path:
    """Write a YAML file atomically, keys in the given order."""
    return write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def usual_file_modes(folder: str | os.PathLike) -> None:
    """Give every file under `folder` the mode a new file gets (0666 less the umask); links are left alone."""
    for entry in Path(folder).rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            entry.chmod(0o666 & ~_UMASK)


def write_safetensors(path: str | os.PathLike, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    """A .safetensors file written atomically, byte for byte the same for the same tensors and metadata, with the
    usual file mode (safetensors' own writer leaves 0600 and a header order that changes run to run)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(reproducible_safetensors(tensors, metadata))
    return Path(path)


def reproducible_safetensors(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """A .safetensors file as bytes, with its JSON header in a fixed order: `__metadata__` first with its
    keys sorted, then the tensors by name. (safetensors itself writes the metadata in hash-map order, which
    changes from one process to the next.) The tensor data are safetensors' own."""
    from safetensors.torch import save as safetensors_bytes

    raw = safetensors_bytes(dict(sorted(tensors.items())), metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + size])
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header with spaces to 8-byte alignment
    return len(text).to_bytes(8, "little") + text + raw[8 + size:]
