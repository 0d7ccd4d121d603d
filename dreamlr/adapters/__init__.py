"""The adapter library: low-rank variants on nn.Linear and nn.Conv2d, one implementation (and module) each."""

from dreamlr.adapters.attach import (
    adapter_layers,
    attach,
    count_parameters,
    detach,
    get_step,
    merge,
    parameter_groups,
    resolve_targets,
    set_step,
    trainable_parameters,
    unmerge,
)
from dreamlr.adapters.base import AdapterLayer
from dreamlr.adapters.config import PRESETS, AdapterConfig, AdapterConfigError
from dreamlr.adapters.io import AdapterFileError, load_adapter, read_adapter_header, save_adapter
from dreamlr.adapters.registry import LAYER_CLASSES, VARIANTS

__all__ = [
    "AdapterConfig", "AdapterConfigError", "AdapterFileError", "AdapterLayer", "LAYER_CLASSES", "PRESETS",
    "VARIANTS", "adapter_layers", "attach", "count_parameters", "detach", "get_step", "load_adapter", "merge",
    "parameter_groups", "read_adapter_header", "resolve_targets", "save_adapter", "set_step",
    "trainable_parameters", "unmerge",
]
