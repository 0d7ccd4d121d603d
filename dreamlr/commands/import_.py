"""`dreamlr import`: a diffusers, PEFT or kohya LoRA as a dreamlr adapter."""

from __future__ import annotations

import argparse
from collections.abc import Iterable

HELP = "turn a diffusers / PEFT / kohya LoRA into a dreamlr adapter (lora, or dora with magnitudes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora", required=True, metavar="PATH", help="LoRA .safetensors file or PEFT adapter folder")
    parser.add_argument("--output", required=True, metavar="FILE", help="dreamlr adapter file to write (.safetensors)")
    parser.add_argument("--model", help="the base model the LoRA belongs to (default: the one the file records)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output (and head.safetensors) if they exist")


def run(args: argparse.Namespace) -> int:
    from dreamlr.commands._checks import check_output_file

    check_output_file(args.output, "--output", "adapter.safetensors")
    from dreamlr.adapters import read_adapter_header
    from dreamlr.export import import_adapter

    path = import_adapter(args.lora, args.output, model=args.model, overwrite=args.overwrite)
    configs = [(config, len(names)) for config, names in read_adapter_header(path)["groups"]]
    variants = ", ".join(dict.fromkeys(config.variant for config, _ in configs))
    print(f"imported {args.lora} ({sum(n for _, n in configs)} layers: {variants}, rank "
          f"{_span(c.rank for c, _ in configs)}, alpha {_span(c.alpha for c, _ in configs)}) -> {path}")
    return 0


def _span(values: Iterable[float]) -> str:
    values = list(values)
    low, high = min(values), max(values)
    return f"{low:g}" if low == high else f"{low:g}-{high:g}"
