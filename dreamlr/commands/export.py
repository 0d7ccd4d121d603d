"""`dreamlr export`: an adapter as a diffusers, PEFT or kohya LoRA, or a merged model."""

from __future__ import annotations

import argparse

HELP = "export an adapter for other tools: diffusers / PEFT / kohya LoRA, or the base model with it merged in"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, metavar="FILE", help="dreamlr adapter (.safetensors)")
    parser.add_argument("--format", required=True, metavar="FORMAT",
                        help="diffusers (pytorch_lora_weights.safetensors), peft (adapter folder), "
                             "kohya (lora_unet_/lora_te_ file), merged (full model folder) or checkpoint (the merged "
                             "Stable Diffusion model as one original-layout .safetensors file, for A1111/ComfyUI)")
    parser.add_argument("--output", required=True, metavar="PATH",
                        help="diffusers: a .safetensors file or a folder; kohya, checkpoint: a .safetensors file; "
                             "peft, merged: a new or empty folder")
    parser.add_argument("--model", help="the base model the adapter was trained on (default: the one it records)")
    parser.add_argument("--rank", type=int,
                        help="re-factor every layer by truncated SVD at this rank (dual_lora, d2lora, and dora "
                             "in kohya, are always SVD-exported: by default at the smallest rank keeping 0.99 of the "
                             "squared Frobenius norm of each layer's update, at least the rank of a LoRA with the "
                             "adapter's parameter count)")
    parser.add_argument("--energy", type=float, metavar="F",
                        help="re-factor every layer by truncated SVD at the smallest rank keeping F (e.g. 0.99) "
                             "of the squared Frobenius norm of its update")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --output file, or what an existing --output folder holds")


def run(args: argparse.Namespace) -> int:
    from dreamlr.commands._checks import check_finite
    from dreamlr.export import export_adapter

    check_finite(args, "energy")
    report = export_adapter(args.adapter, args.format, args.output, model=args.model, rank=args.rank,
                            energy=args.energy, overwrite=args.overwrite)
    print("\n".join(report.lines()))
    return 0
