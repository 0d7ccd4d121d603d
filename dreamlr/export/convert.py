"""export_adapter / import_adapter: a dreamlr adapter to diffusers, PEFT, kohya or a merged model, and back."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from dreamlr.adapters import AdapterConfig, adapter_layers, detach, load_adapter, read_adapter_header, save_adapter
from dreamlr.adapters.attach import attach_to
from dreamlr.adapters.base import AdapterLayer, is_adaptable
from dreamlr.adapters.io import FORMAT as DREAMLR_FORMAT
from dreamlr.errors import UserError
from dreamlr.export import diffusers_lora, kohya, layouts, loha, naming, peft_lora
from dreamlr.export.base_model import BaseModel, load_base
from dreamlr.export.factors import DEFAULT_ENERGY, LoRAFactors, layer_factors
from dreamlr.export.files import read_safetensors
from dreamlr.export.kohya import Factors
from dreamlr.export.ldm import ldm_names
from dreamlr.export.loha import HadaFactors
from dreamlr.export.report import ExportReport, LayerResult
from dreamlr.fileio import atomic_dir, atomic_path, remove_stale_temps, resolve_parent, usual_file_modes

FORMATS = ("diffusers", "peft", "kohya", "merged", "checkpoint")


def export_adapter(adapter_path: str | os.PathLike, format: str, output: str | os.PathLike,
                   model: str | None = None, rank: int | None = None, energy: float | None = None,
                   overwrite: bool = False) -> ExportReport:
    """Write a dreamlr adapter in `format` to `output` and say how exact it is.

    `model` is the base the adapter was trained on (default: the adapter's `base_model`).
    Variants with exact LoRA factors (`lora`, `loraplus`, `singlora`; `dora` outside kohya) export
    exactly, and `loha` to kohya as LyCORIS' LoHa; other variants and formats, and any variant when
    `rank` or `energy` is given, by truncated SVD of W' − W0: at `rank`, at the smallest rank keeping
    `energy` of ‖W' − W0‖²_F, or by default at the smallest rank keeping 0.99 of it (at least the rank
    of a LoRA with the adapter's parameter count). `checkpoint` writes the merged Stable Diffusion model
    as one original-layout file (`dreamlr.diffusion.single_file`). An existing `output` is replaced only
    with `overwrite`.
    """
    _check_options(format, rank, energy)
    adapter_path = Path(adapter_path)
    header = read_adapter_header(adapter_path)
    names = [name for _, group in header["groups"] for name in group]
    diffusion = naming.is_diffusion(names)
    if format in ("diffusers", "kohya", "checkpoint") and not diffusion:
        raise UserError(f"adapter '{adapter_path}' is for a text model; the {format} format holds Stable Diffusion "
                        "adapters: use --format peft or merged")
    output = _output_path(format, Path(output), overwrite)
    base = _base_with_adapter(adapter_path, header, model, diffusion)
    variants = tuple(dict.fromkeys(config.variant for config, _ in header["groups"]))
    report = ExportReport(adapter=adapter_path, format=format, output=output, variants=variants, head=base.head)
    if format == "checkpoint":
        from dreamlr.diffusion.single_file import write_single_file

        report.layers = [LayerResult(name, layer.config.rank) for name, layer in adapter_layers(base.model)]
        report.merged_into = f"'{base.source}' as one original-layout checkpoint in {str(base.dtype).removeprefix('torch.')}"
        detach(base.model, merge=True)
        write_single_file(base.pipeline, output)
        return report
    if format == "merged":
        report.layers = [LayerResult(name, layer.config.rank) for name, layer in adapter_layers(base.model)]
        report.merged_into = f"'{base.source}' as a {base.kind} folder in {str(base.dtype).removeprefix('torch.')}"
        detach(base.model, merge=True)  # W' in fp32, cast once to the base's dtype
        with atomic_dir(output) as tmp:
            base.save(tmp)
            usual_file_modes(tmp)  # diffusers and transformers save .safetensors files as 0600
        return report
    factors = {name: _layer_factors(layer, format, rank, energy) for name, layer in adapter_layers(base.model)}
    report.layers = [LayerResult(name, f.rank, f.error) for name, f in factors.items()]
    report.truncation = _truncation(rank, energy)
    _write_lora(format, _by_component(factors) if diffusion else {"": factors}, output, base)
    return report


def import_adapter(path: str | os.PathLike, output: str | os.PathLike, model: str | None = None,
                   overwrite: bool = False) -> Path:
    """Turn a diffusers / PEFT / kohya LoRA (file or PEFT folder) into a dreamlr adapter file.

    The format is told from the keys; layers with a DoRA magnitude become `dora`, LyCORIS LoHa layers
    (kohya files) `loha`, the rest `lora`, at each layer's own rank and alpha. `model` (default: the
    base model the file records) gives the module names and shapes the file must fit. An existing
    `output` (or the head file beside it) is replaced only with `overwrite`.
    """
    path, output = Path(path), resolve_parent(output)
    _check_new_file(output, overwrite)
    fmt, factors, full, recorded_base, task = _read_lora(path)
    source = model or recorded_base
    if not source:
        raise UserError(f"'{path}' does not record its base model; pass it with --model "
                        "(hub id, local folder, .safetensors file, or tiny)")
    diffusion = fmt != "peft" or naming.is_diffusion(factors)
    base = load_base(source, diffusion, {"task": task})
    ldm = ldm_names(base.model["unet"]) if diffusion else None  # kohya files may use original-SD UNet names
    index = naming.ModuleIndex((n for n, m in base.model.named_modules() if is_adaptable(m)), diffusion, ldm)
    placed: dict[str, tuple[str, Factors]] = {}
    for file_name, f in factors.items():
        name = index.find(file_name, kohya=fmt == "kohya")
        if name is None:
            raise UserError(f"'{path}': {file_name} is not an adaptable layer of model '{source}'; "
                            "is the LoRA for another base model? pass the right one with --model")
        placed[name] = (file_name, f)
    groups: dict[tuple[str, int, float], list[str]] = {}
    for name, (_, f) in placed.items():
        variant = "loha" if isinstance(f, HadaFactors) else "dora" if f.magnitude is not None else "lora"
        groups.setdefault((variant, f.rank, f.alpha), []).append(name)
    for (variant, rank, alpha), names in groups.items():
        attach_to(base.model, names, AdapterConfig(variant=variant, rank=rank, alpha=alpha, targets=names))
    layers = dict(adapter_layers(base.model))
    for name, (file_name, f) in placed.items():
        if isinstance(f, HadaFactors):
            for role, tensor in f.tensors.items():
                _copy_tensor(f"'{path}': {file_name}.{role}", tensor, getattr(layers[name], role), source)
            continue
        _copy_tensor(f"'{path}': the down factor of {file_name}", f.down, layers[name].lora_A, source)
        _copy_tensor(f"'{path}': the up factor of {file_name}", f.up, layers[name].lora_B, source)
        if f.magnitude is not None:
            _copy_tensor(f"'{path}': the magnitude of {file_name}", f.magnitude, layers[name].magnitude, source)
    metadata = {"base_model": source, "imported_from": str(path), "format": fmt}
    if full:  # PEFT modules_to_save: a trained classification head, kept where `dreamlr text` looks for it
        from dreamlr.text.head import HEAD_FILE, save_head

        if task != "SEQ_CLS":
            raise UserError(f"'{path}' saves whole modules ({', '.join(sorted(full))}) of a {task or 'generic'} "
                            "model; dreamlr imports them only as a sequence classifier's head (task_type SEQ_CLS)")
        labels = base.model.config.id2label
        metadata.update(task="classification", labels=[labels[i] for i in range(len(labels))])
        params = dict(base.model.named_parameters())
        for name, tensor in full.items():
            if name not in params:
                raise UserError(f"'{path}': {name} (modules_to_save) is not a parameter of model '{source}'")
            _copy_tensor(f"'{path}': {name}", tensor, params[name], source)
        _check_new_file(output.parent / HEAD_FILE, overwrite)
        metadata["head"] = str(save_head(base.model, sorted(full), output.parent / HEAD_FILE))
    return save_adapter(base.model, output, metadata=metadata)


def _write_lora(format: str, components: dict[str, dict[str, Factors]], output: Path, base: BaseModel) -> None:
    """Write LoRA (kohya: and LoHa) factors (by model part: "unet" / "text_encoder(_2)", or "" for one model)
    atomically."""
    if format == "peft":  # one adapter folder per model part, a classifier's head in full
        params = dict(base.model.named_parameters())
        with atomic_dir(output) as tmp:
            for component, factors in components.items():
                (tmp / component).mkdir(exist_ok=True)
                peft_lora.write(factors, tmp / component, base.source, full={n: params[n] for n in base.head},
                                task_type="SEQ_CLS" if base.head else None)
        return
    with atomic_path(output) as tmp:
        if format == "diffusers":
            diffusers_lora.write(components, tmp, {"base_model": base.source})
        else:
            sdxl_ldm = ldm_names(base.model["unet"]) if "text_encoder_2" in base.model else None
            kohya.write(components, tmp, {"base_model": base.source}, sdxl_ldm)


def _layer_factors(layer: AdapterLayer, format: str, rank: int | None, energy: float | None) -> Factors:
    """A layer as the format holds it: kohya holds a `loha` layer as it is, as LyCORIS' LoHa."""
    hada = loha.from_layer(layer) if format == "kohya" and rank is None and energy is None else None
    return hada or layer_factors(layer, rank, energy, dora=format != "kohya")


def _check_options(format: str, rank: int | None, energy: float | None) -> None:
    if format not in FORMATS:
        raise UserError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if rank is not None and energy is not None:
        raise UserError("give --rank or --energy, not both")
    if format in ("merged", "checkpoint") and (rank is not None or energy is not None):
        raise UserError("--rank and --energy choose a LoRA's rank; a merged model has none: leave them out")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise UserError(f"--rank must be a positive integer, got {rank!r}")
    if energy is not None and not 0 < energy <= 1:
        raise UserError(f"--energy must be in (0, 1], e.g. 0.99, got {energy!r}")


def _truncation(rank: int | None, energy: float | None) -> str:
    if rank is not None:
        return f"--rank {rank}, at most min(out, in)"
    if energy is not None:
        return f"smallest keeping {energy:g} of |dW|_F^2, --energy"
    return (f"default: smallest keeping {DEFAULT_ENERGY:g} of |dW|_F^2, at least a LoRA with the adapter's parameter "
            "count; set --rank N or --energy F")


def _output_path(format: str, output: Path, overwrite: bool = False) -> Path:
    """The file or folder an export writes; an existing file or non-empty folder is replaced only with
    `overwrite`. Temp files an interrupted export of the same path left are removed."""
    output = resolve_parent(output)
    if format == "diffusers" and output.suffix != ".safetensors":
        if output.is_dir() and any(output.iterdir()) and not overwrite:
            raise UserError(f"--output {output} is a folder that already holds files; give a new or empty folder, "
                            "or --overwrite to replace its LoRA file")
        output = output / diffusers_lora.WEIGHT_NAME
    if format in ("diffusers", "kohya", "checkpoint"):
        if output.suffix != ".safetensors":
            raise UserError(f"--output {output}: a {format} export is one .safetensors file; give a path ending in "
                            ".safetensors")
        _check_new_file(output, overwrite)
    elif output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise UserError(f"--output {output} already exists and is not an empty folder; choose another, or "
                        "--overwrite to replace it")
    else:
        remove_stale_temps(output.parent, output.name)
    return output


def _check_new_file(output: Path, overwrite: bool) -> None:
    """Refuse an output file path that is a folder, or that exists without `overwrite`; clear stale temps."""
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; give a file path")
    if (output.exists() or output.is_symlink()) and not overwrite:
        raise UserError(f"--output {output} already exists; choose another path, or --overwrite to replace it")
    remove_stale_temps(output.parent, output.name)


def _base_with_adapter(adapter_path: Path, header: dict, model: str | None, diffusion: bool) -> BaseModel:
    """The base model the adapter was trained on, with the adapter loaded; a misfit is one clear error."""
    source = model or header["metadata"].get("base_model")
    if not source:
        raise UserError(f"adapter '{adapter_path}' does not record its base model; pass it with --model")
    base = load_base(source, diffusion, header["metadata"])
    try:
        load_adapter(base.model, adapter_path)
    except UserError as exc:
        raise UserError(f"{exc} (was it trained on '{source}'? pass its base model with --model)") from None
    if header["metadata"].get("task") == "classification":  # `dreamlr text train` keeps the head beside the adapter
        from dreamlr.text.head import HEAD_FILE, load_head
        from dreamlr.text.models import head_parameter_names

        head_file = adapter_path.parent / HEAD_FILE
        if not head_file.is_file():
            raise UserError(f"classifier adapter '{adapter_path}' has no {HEAD_FILE} beside it; without its trained "
                            "head the exported classifier would be untrained")
        base.head = head_parameter_names(base.model)
        load_head(base.model, base.head, head_file)
    return base


def _by_component(factors: dict[str, Factors]) -> dict[str, dict[str, Factors]]:
    """{"unet": {path: …}, "text_encoder": {…}} from `unet.<path>` / `text_encoder.<path>` names."""
    parts: dict[str, dict[str, Factors]] = {}
    for name, f in factors.items():
        component, path = naming.split(name)
        parts.setdefault(component, {})[path] = f
    return parts


def _read_lora(path: Path) -> tuple[str, dict[str, Factors], dict[str, torch.Tensor], str | None, str | None]:
    """(format, factors by the file's module names, full parameters (PEFT modules_to_save), recorded base
    model, task) of a LoRA file or folder."""
    if path.is_dir():
        return _read_peft_folder(path)
    if path.name == peft_lora.WEIGHTS_FILE and peft_lora.is_adapter_folder(path.parent):
        return _read_peft_folder(path.parent)
    tensors, header = read_safetensors(path)
    keys = list(tensors)
    if header.get("format") == DREAMLR_FORMAT:
        raise UserError(f"'{path}' is already a dreamlr adapter; use it as it is")
    if kohya.is_kohya(keys):
        factors, header = kohya.read(path)
        return "kohya", factors, {}, header.get("base_model"), None
    if keys and all(k.startswith(peft_lora.PREFIX) for k in keys):
        raise UserError(f"'{path}' holds PEFT keys but no {peft_lora.CONFIG_FILE} beside it; give the PEFT folder")
    if layouts.has_lora_keys(keys):  # every diffusers layout; an unknown or unsupported key is named there
        factors, header = diffusers_lora.read(path)
        return "diffusers", factors, {}, header.get("base_model"), None
    raise UserError(f"'{path}' is not a LoRA file this importer knows (diffusers, PEFT or kohya); "
                    f"first key: {keys[0] if keys else '(none)'}")


def _read_peft_folder(path: Path) -> tuple[str, dict[str, LoRAFactors], dict[str, torch.Tensor], str | None,
                                           str | None]:
    """A PEFT adapter folder (of a text model, or of one pipeline part: a UNet, or a folder named text_encoder),
    or one subfolder per pipeline part (unet/, text_encoder/)."""
    if peft_lora.is_adapter_folder(path):
        factors, config, full = peft_lora.read(path)
        component = naming.sd_component(factors, path.name)
        if component is None:
            return "peft", factors, full, config.get("base_model_name_or_path"), config.get("task_type")
        if full:
            raise UserError(f"'{path}' saves whole modules ({', '.join(config['modules_to_save'])}); "
                            "a Stable Diffusion adapter can only be imported as LoRA layers")
        factors = {f"{component}.{name}": f for name, f in factors.items()}
        return "peft", factors, {}, config.get("base_model_name_or_path"), None
    parts = [c for c in naming.COMPONENTS if peft_lora.is_adapter_folder(path / c)]
    if not parts:
        raise UserError(f"'{path}' is a folder without {peft_lora.CONFIG_FILE} and {peft_lora.WEIGHTS_FILE} "
                        f"(nor {' / '.join(naming.COMPONENTS)} subfolders with them): not a PEFT adapter")
    factors, base = {}, None
    for component in parts:
        part, config, full = peft_lora.read(path / component)
        if full:
            raise UserError(f"'{path / component}' saves whole modules ({', '.join(config['modules_to_save'])}); "
                            "a Stable Diffusion adapter can only be imported as LoRA layers")
        factors.update({f"{component}.{name}": f for name, f in part.items()})
        base = base or config.get("base_model_name_or_path")
    return "peft", factors, {}, base, None


def _copy_tensor(where: str, tensor: torch.Tensor, param: torch.nn.Parameter, source: str) -> None:
    """Copy an imported tensor into the model, which must have the same shape."""
    if tuple(tensor.shape) != tuple(param.shape):
        raise UserError(f"{where} has shape {tuple(tensor.shape)} but model '{source}' needs {tuple(param.shape)}; "
                        "is the LoRA for another base model?")
    with torch.no_grad():
        param.copy_(tensor)
