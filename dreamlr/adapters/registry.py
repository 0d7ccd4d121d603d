"""The variant registry: every AdapterLayer subclass with a `name` in a module of dreamlr/adapters/.

A new variant is one module here (and its tests): VARIANTS, `attach`, config validation, the CLI's
help, compare's default list and the exporters all read LAYER_CLASSES, in the classes' `order`.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from dreamlr.adapters.base import AdapterLayer

# the library's own modules, which define no variant
_LIBRARY = frozenset({"attach", "base", "config", "ema", "io", "registry"})


def _find_variants() -> dict[str, type[AdapterLayer]]:
    found: list[type[AdapterLayer]] = []
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name in _LIBRARY:
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        found += [value for value in vars(module).values()
                  if isinstance(value, type) and issubclass(value, AdapterLayer) and value.__module__ == module.__name__
                  and value.name]
    found.sort(key=lambda cls: (cls.order, cls.name))
    classes = {cls.name: cls for cls in found}
    if len(classes) < len(found):
        raise RuntimeError(f"two adapter variants share a name: {[cls.name for cls in found]}")
    return classes


LAYER_CLASSES: dict[str, type[AdapterLayer]] = _find_variants()
VARIANTS: tuple[str, ...] = tuple(LAYER_CLASSES)


def variant_help() -> str:
    """The variants with their own options, for --variant's help."""
    named = [f"{name} ({', '.join(cls.options)})" if cls.options else name for name, cls in LAYER_CLASSES.items()]
    return f"{', '.join(named[:-1])} or {named[-1]}; options go in the config's adapter section (--set adapter.KEY=V)"
