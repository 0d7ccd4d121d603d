"""Run configs from YAML files and `--set key=value` flags, shared by the image and text trainers.

Values are read as YAML, with two fixes from YAML 1.2 over the 1.1 that PyYAML follows: `5e-5` is a number (1.1
reads a float without a dot as text), so a learning rate can be written as people write it; and only true/false
are booleans, so `mixed_precision: no` is the word "no" (1.1 reads yes/no/on/off as booleans). A key typed bool
still takes yes/no/on/off/y/n.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from dreamlr.errors import UserError


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's float syntax (`1e-4`, `5E+3`) besides 1.1's, and 1.2's booleans
    (true/false only: yes/no/on/off stay words)."""


# YAML 1.1 words that mean a boolean; a key typed bool still takes them (see `_coerce_bools`)
BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "on": True, "off": False, "y": True, "n": False}

_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))

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
    if file.is_dir():
        raise UserError(f"config file '{path}' is a folder; give a YAML file (e.g. configs/quickstart.yaml)")
    if not file.is_file():
        raise UserError(f"config file '{path}' does not exist")
    if file.resolve() in seen:
        raise UserError(f"config file '{path}' extends itself (through {', '.join(str(p) for p in seen)})")
    try:
        data = load_yaml(file.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"config file '{path}' is not a text file (not UTF-8); give a YAML config file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserError(f"config file '{path}' is not valid YAML{f' at line {mark.line + 1}' if mark else ''}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping of keys to values")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise UserError(f"config file '{path}': `extends` must name a YAML file, got {parent!r}")
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
    data = rename_aliases(data, getattr(cls, "aliases", {}))
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        where = f"`{command} --list-keys` lists the known keys"
        raise UserError(unknown_keys_message(unknown, known, "config key", where))
    _coerce_bools(cls, data)
    defaults = cls()
    for name in nested:
        if name in data:
            if not isinstance(data[name], dict):
                raise UserError(f"config key {name!r} must be a mapping, got {data[name]!r}")
            data[name] = {**getattr(defaults, name), **data[name]}
    return data


def rename_aliases(data: dict[str, Any], aliases: dict[str, str], note: bool = True) -> dict[str, Any]:
    """`data` with old key names (`aliases`: old -> new) replaced by their new ones, a note on stderr for each;
    both names at once is a UserError."""
    renamed = dict(data)
    for old, new in aliases.items():
        if old not in renamed:
            continue
        if new in renamed:
            raise UserError(f"config keys {old!r} and {new!r} are the same setting ({old} is its old name); "
                            f"give only {new}")
        renamed[new] = renamed.pop(old)
        if note:
            print(f"note: config key {old!r} is now {new!r}; the old name works until dreamlr 0.3", file=sys.stderr)
    return renamed


def unknown_keys_message(unknown: list[str], known: list[str], what: str, where: str) -> str:
    """'unknown config key 'lerning_rate' (did you mean 'learning_rate'?); <where>'."""
    close = difflib.get_close_matches(unknown[0], known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    names = ", ".join(repr(name) for name in unknown)
    return f"unknown {what}{'s' if len(unknown) > 1 else ''} {names}{hint}; {where}"


def _coerce_bools(cls: type, data: dict[str, Any]) -> None:
    """YAML 1.1's boolean words (yes/no/on/off/y/n) for a key typed bool; true/false for a key typed str."""
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        options = _options(hints[name])
        if isinstance(value, str) and value.lower() in BOOL_WORDS and bool in options and str not in options:
            data[name] = BOOL_WORDS[value.lower()]
        elif isinstance(value, bool) and str in options and bool not in options:
            data[name] = str(value).lower()


def _options(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def list_keys(cls: type, nested: dict[str, type] | None = None) -> str:
    """Every key of a config dataclass with its type and default, one per line (for `--list-keys`); the keys of
    a `nested` mapping are listed as `name.key`, with the nested dataclass's types."""
    rows = [("key", "type", "default")]
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        default = _field_default(field)
        if nested and field.name in nested:
            inner = nested[field.name]
            inner_hints = typing.get_type_hints(inner)
            rows += [(f"{field.name}.{f.name}", _type_name(inner_hints[f.name]),
                      _yaml_value(default.get(f.name, _field_default(f)))) for f in dataclasses.fields(inner)]
        else:
            rows.append((field.name, _type_name(hints[field.name]), _yaml_value(default)))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    return "\n".join(f"{k:<{widths[0]}}  {t:<{widths[1]}}  {d}".rstrip() for k, t, d in rows)


def _field_default(field: dataclasses.Field) -> Any:
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def _type_name(hint: Any) -> str:
    names = []
    for option in _options(hint):
        origin = typing.get_origin(option) or option
        if option is type(None):
            names.append("null")
        elif origin in (list, tuple):
            names.append(f"list[{typing.get_args(option)[0].__name__}]")
        elif origin is dict:
            names.append("mapping")
        else:
            names.append(origin.__name__)
    return " | ".join(names)


def _yaml_value(value: Any) -> str:
    if isinstance(value, str) and value:
        return value.replace("\n", "\\n")
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...").strip()


def check_output_dir(path: str) -> None:
    """An output folder must be a folder (or not exist yet), never an existing file."""
    if Path(path).expanduser().exists() and not Path(path).expanduser().is_dir():
        raise UserError(f"output_dir '{path}' is an existing file, not a folder; give a folder path (--output-dir)")


def check_types(config: Any) -> None:
    """Check every field of a config dataclass against its type hint; UserError names the first wrong one."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        _check_type(field.name, getattr(config, field.name), hints[field.name])


def _check_type(name: str, value: Any, hint: Any) -> None:
    """One value against a type hint (str, int, float, bool, dict, list[str], unions with None); an int is a
    valid float, a bool is not a number."""
    options = _options(hint)
    for option in options:
        if option is type(None):
            if value is None:
                return
            continue
        origin = typing.get_origin(option) or option
        if isinstance(value, bool) and origin is not bool:
            continue
        if origin is float and isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise UserError(f"config key {name!r} must be a finite number, got {value!r}")
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
