"""attach / detach / merge / unmerge / set_step and parameter access on a whole model."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from torch import nn

from dreamlr.adapters.base import AdapterLayer, is_adaptable, is_linear_like
from dreamlr.adapters.config import PRESETS, AdapterConfig, AdapterConfigError
from dreamlr.adapters.registry import LAYER_CLASSES

# `all-linear` leaves output heads alone: they are trained in full or not at all.
_HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs")
_REGEX_CHARS = set("*+?[](){}|^$\\")


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    """(name, layer) for every adapter layer in the model."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


def _candidate_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Named modules outside adapter layers' wrapped bases (an adapter layer itself is included)."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, AdapterLayer):
            inside.append(name + ".")
        yield name, module


def _matches(name: str, target: str) -> bool:
    if _REGEX_CHARS & set(target):
        return re.fullmatch(target, name) is not None
    return name == target or name.endswith("." + target)


def resolve_targets(model: nn.Module, targets: str | Iterable[str]) -> list[str]:
    """Names of the modules `targets` selects; an error names the target that matches nothing."""
    candidates = [(n, m) for n, m in _candidate_modules(model) if n]
    if targets == "all-linear":
        chosen = [
            n for n, m in candidates
            if is_linear_like(m.base_layer if isinstance(m, AdapterLayer) else m) and n.split(".")[-1] not in _HEAD_NAMES
        ]
        if not chosen:
            raise AdapterConfigError(f"target preset 'all-linear' matches no linear layer in {type(model).__name__}")
        return chosen
    is_preset = isinstance(targets, str)
    patterns = PRESETS[targets] if is_preset else tuple(targets)
    chosen, missing = [], []
    for pattern in patterns:
        hits = [n for n, _ in candidates if _matches(n, pattern)]
        if not hits:
            missing.append(pattern)
        chosen.extend(h for h in hits if h not in chosen)
    if missing and (not is_preset or not chosen):
        what = f"preset {targets!r}" if is_preset else f"target {missing[0]!r}"
        raise AdapterConfigError(
            f"{what} matches no module of {type(model).__name__}; some that exist: {_examples(candidates)}"
        )
    return chosen


def _examples(candidates: list[tuple[str, nn.Module]], limit: int = 8) -> str:
    """A few distinct short names of adaptable modules, for error messages."""
    seen: list[str] = []
    for name, module in candidates:
        if is_adaptable(module):
            short = ".".join(name.split(".")[-2:]) if name.split(".")[-1].isdigit() else name.split(".")[-1]
            if short not in seen:
                seen.append(short)
    shown = ", ".join(seen[:limit]) or "(no nn.Linear or nn.Conv2d at all)"
    return shown + (", …" if len(seen) > limit else "")


def attach(model: nn.Module, config: AdapterConfig, *, freeze: bool = True) -> list[str]:
    """Wrap every module `config.targets` selects in the variant's adapter layer.

    Freezes the rest of the model (unless `freeze=False`). Returns the wrapped module names.
    A module that already carries an adapter is an error, never a silent stack.
    """
    names = resolve_targets(model, config.targets)
    return attach_to(model, names, config, freeze=freeze)


def attach_to(model: nn.Module, names: list[str], config: AdapterConfig, *, freeze: bool = True) -> list[str]:
    """Wrap exactly the named modules (see `attach`)."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise AdapterConfigError(f"module {name!r} does not exist in {type(model).__name__}")
        if isinstance(modules[name], AdapterLayer):
            raise AdapterConfigError(
                f"module {name!r} already has a {modules[name].config.variant} adapter; detach it first"
            )
    layer_class = LAYER_CLASSES[config.variant]
    layers = {name: layer_class(modules[name], config, name) for name in names}
    if freeze:
        model.requires_grad_(False)
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        model.get_submodule(parent_name).register_module(child, layer)
    return names


def detach(model: nn.Module, *, merge: bool = False) -> list[str]:
    """Remove every adapter layer, putting back the base module.

    With `merge=True` the adapter is folded into the base weights first (for good);
    otherwise the base weights are restored exactly.
    """
    names = []
    for name, layer in list(adapter_layers(model)):
        if merge:
            layer.merge()
            layer._w0 = None
        else:
            layer.unmerge()
        parent_name, _, child = name.rpartition(".")
        model.get_submodule(parent_name).register_module(child, layer.base_layer)
        names.append(name)
    return names


def merge(model: nn.Module) -> None:
    """Fold each adapter into its base weight (fp32 math, one cast); unmerge undoes it exactly."""
    for _, layer in adapter_layers(model):
        layer.merge()


def unmerge(model: nn.Module) -> None:
    """Restore every merged base weight bit-exactly."""
    for _, layer in adapter_layers(model):
        layer.unmerge()


def set_step(model: nn.Module, step: int) -> None:
    """Tell every adapter the optimizer step (drives SingLoRA's ramp and Dual LoRA's warm-up)."""
    for _, layer in adapter_layers(model):
        layer.step.fill_(int(step))


def get_step(model: nn.Module) -> int:
    """The step the adapters were last told (0 when none is attached)."""
    return next((int(layer.step) for _, layer in adapter_layers(model)), 0)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Adapter tensors by their full name (`<module path>.<tensor name>`)."""
    params = {}
    for name, layer in adapter_layers(model):
        for tensor_name in layer.tensor_names:
            params[f"{name}.{tensor_name}" if name else tensor_name] = getattr(layer, tensor_name)
    return params


# Tensors kept out of weight decay: DoRA's magnitude is a per-row gain that starts at ‖W0‖_row, so decay
# would pull the layer away from the base model (decay on the low-rank factors pulls it towards it).
NO_DECAY: frozenset[str] = frozenset({"magnitude"})


def parameter_groups(model: nn.Module, lr: float, weight_decay: float | None = None) -> list[dict]:
    """Optimizer parameter groups for the adapter tensors, one per learning rate (LoRA+ B at λ·lr).

    Every adapter tensor gets `weight_decay` except those in NO_DECAY (DoRA's magnitude), which get 0;
    `None` leaves the key out, so the optimizer's own value (e.g. `build_optimizer`'s) applies.
    """
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for _, layer in adapter_layers(model):
        multipliers = layer.lr_multipliers()
        for tensor_name in layer.tensor_names:
            key = (lr * multipliers.get(tensor_name, 1.0), tensor_name in NO_DECAY)
            groups.setdefault(key, []).append(getattr(layer, tensor_name))
    result = []
    for (group_lr, no_decay), params in groups.items():
        group = {"params": params, "lr": group_lr}
        if no_decay:
            group["weight_decay"] = 0.0
        elif weight_decay is not None:
            group["weight_decay"] = weight_decay
        result.append(group)
    return result


def reconfigure(layer: AdapterLayer, config: AdapterConfig) -> None:
    """Give an attached layer another config of its variant (what `load_adapter` does with a file's config).

    The tensors stay (their shapes must already fit `config`); what the layer derives from its config —
    scale, adapter dropout, and through `config` the ramps, τ, projection, STE — follows. A merged layer is
    unmerged first and merged again with the new config.
    """
    if config == layer.config:
        return
    if config.variant != layer.config.variant:
        raise AdapterConfigError(f"cannot give a {layer.config.variant} adapter a {config.variant} config")
    was_merged = layer.merged
    layer.unmerge()
    layer.config = config
    layer.scale = config.scale
    dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
    layer.dropout = dropout.train(layer.training)
    if was_merged:
        layer.merge()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable adapter parameters."""
    return sum(p.numel() for p in trainable_parameters(model).values())


def adapter_configs(model: nn.Module) -> list[tuple[AdapterConfig, list[str]]]:
    """The distinct configs attached to the model with the modules each one wraps."""
    groups: list[tuple[AdapterConfig, list[str]]] = []
    for name, layer in adapter_layers(model):
        for config, names in groups:
            if config == layer.config:
                names.append(name)
                break
        else:
            groups.append((layer.config, [name]))
    return groups
