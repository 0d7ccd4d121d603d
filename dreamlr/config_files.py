"""Run configs from YAML files and `--set key=value` flags, shared by the image and text trainers.

Values are read as YAML, with one fix: `5e-5` is a number (YAML 1.1, which PyYAML follows, reads a float
without a dot as text), so a learning rate can be written as people write it.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from dreamlr.errors import UserError


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax (`1e-4`, `5E+3`) besides 1.1's."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML text (safe types only; `1e-4` is a float)."""
    return yaml.load(text, Loader=_Loader)


def read_config_file(path: str | Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's keys; `extends: other.yaml` (relative to the file) supplies defaults, merged key by key."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file '{path}' does not exist")
    if file.resolve() in seen:
        raise UserError(f"config file '{path}' extends itself (through {', '.join(str(p) for p in seen)})")
    try:
        data = load_yaml(file.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"config file '{path}' is not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys to values")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return _merge(read_config_file(file.parent / parent, (*seen, file.resolve())), data)


def parse_set(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs from --set, values read as YAML (numbers, booleans, null, lists)."""
    result = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set learning_rate=5e-5")
        try:
            result[key.strip()] = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--set {item!r}: the value is not valid YAML") from None
    return result


def build_config(cls: type, config_file: str | None, overrides: dict[str, Any] | None, command: str,
                 nested: tuple[str, ...] = ("adapter",)) -> dict[str, Any]:
    """The keyword arguments of a config dataclass: defaults < YAML file < overrides (a dotted key reaches into
    a nested mapping); the `nested` mappings merge with their defaults. Unknown keys are an error."""
    data: dict[str, Any] = read_config_file(config_file) if config_file else {}
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value, key)
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UserError(f"unknown config key(s) {', '.join(unknown)}; see `{command} --help` for the known keys")
    defaults = cls()
    for name in nested:
        if name in data:
            if not isinstance(data[name], dict):
                raise UserError(f"config key {name!r} must be a mapping, got {data[name]!r}")
            data[name] = {**getattr(defaults, name), **data[name]}
    return data


def check_types(config: Any) -> None:
    """Check every field of a config dataclass against its type hint; UserError names the first wrong one."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        _check_type(field.name, getattr(config, field.name), hints[field.name])


def _check_type(name: str, value: Any, hint: Any) -> None:
    """One value against a type hint (str, int, float, bool, dict, list[str], unions with None); an int is a
    valid float, a bool is not a number."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None):
            if value is None:
                return
            continue
        origin = typing.get_origin(option) or option
        if isinstance(value, bool) and origin is not bool:
            continue
        if origin is float and isinstance(value, (int, float)):
            return
        if origin is list and isinstance(value, list):
            if all(isinstance(item, typing.get_args(option)[0]) for item in value):
                return
        elif isinstance(value, origin):
            return
    names = " or ".join(getattr(o, "__name__", str(o)).replace("NoneType", "null") for o in options)
    raise UserError(f"config key {name!r} must be {names}, got {value!r}")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def _set_dotted(data: dict[str, Any], key: str, value: Any, full_key: str) -> None:
    head, _, rest = key.partition(".")
    if not rest:
        data[head] = value
        return
    child = data.setdefault(head, {})
    if not isinstance(child, dict):
        raise UserError(f"--set {full_key}: {head!r} is not a mapping")
    _set_dotted(child, rest, value, full_key)
