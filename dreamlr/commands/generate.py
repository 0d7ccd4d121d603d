"""`dreamlr generate`: images for a prompt set, with adapters merged (weighted) or live, plus a manifest."""

from __future__ import annotations

import argparse
import math

from dreamlr.errors import UserError
from dreamlr.evaluation.dreambench import IMAGES_PER_PROMPT

HELP = "Generate images for a prompt set (e.g. DreamBench) with one or more adapters; writes a manifest.jsonl."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="SD 1.x, 2.x or SDXL: hub id, local diffusers folder, .safetensors/.ckpt file, or a "
                             "built-in (`tiny`, `tiny-sdxl`, `world`)")
    parser.add_argument("--adapter", action="append", default=[], metavar="FILE",
                        help="dreamlr adapter file; repeat to combine several (none: the base model)")
    parser.add_argument("--weights", metavar="W1,W2,…", help="one weight per --adapter (default 1 each)")
    parser.add_argument("--no-merge", action="store_true", help="keep the adapter live instead of merging it")
    parser.add_argument("--prompts", required=True, metavar="FILE|dreambench:object|dreambench:live",
                        help="text file (one prompt per line, {token} and {class} filled in) or a DreamBench list; "
                             "`dreambench` picks the list from --class-name")
    parser.add_argument("--token", default="sks", help="rare token of the subject (default: sks)")
    parser.add_argument("--class-name", metavar="NOUN", help="class noun of the subject, e.g. dog")
    parser.add_argument("--num-images", type=int, default=IMAGES_PER_PROMPT,
                        help=f"images per prompt (default {IMAGES_PER_PROMPT})")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--scheduler", help="ddim, ddpm, pndm, euler, euler_a, heun, dpm++ (= dpmsolver), unipc "
                                            "(default: the model's own)")
    parser.add_argument("--resolution", type=int, help="image side in pixels (default: the model's native size)")
    parser.add_argument("--zero-snr", action="store_true",
                        help="sample a v-prediction model trained with rescale_betas_zero_snr: DDIM on the rescaled "
                             "schedule, trailing timesteps, guidance rescale 0.7")
    parser.add_argument("--seed", type=int, default=0, help="run seed; each image's seed derives from it (default 0)")
    parser.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (default 4)")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="new or empty folder for images + manifest")


def _weights(text: str | None, count: int) -> list[float] | None:
    if text is None:
        return None
    try:
        weights = [float(part) for part in text.split(",")]
    except ValueError:
        raise UserError(f"--weights {text!r}: give {count} comma-separated numbers, e.g. 1,0.5") from None
    if not all(math.isfinite(weight) for weight in weights):
        raise UserError(f"--weights {text!r}: every weight must be a finite number")
    return weights


def run(args: argparse.Namespace) -> int:
    from dreamlr.commands._checks import check_finite
    from dreamlr.evaluation.prompts import load_prompts

    check_finite(args, "guidance")
    prompts = load_prompts(args.prompts, args.token, args.class_name)  # before the slow import below
    weights = _weights(args.weights, len(args.adapter))
    from dreamlr.diffusion.generate import Settings, generate_folder

    settings = Settings(num_images=args.num_images, steps=args.steps, guidance=args.guidance,
                        scheduler=args.scheduler, resolution=args.resolution, seed=args.seed,
                        batch_size=args.batch_size, merge=not args.no_merge, zero_snr=args.zero_snr)
    entries = generate_folder(args.model, prompts, args.output_dir, settings, adapters=args.adapter,
                              weights=weights,
                              extra={"prompts": args.prompts, "token": args.token, "class_name": args.class_name})
    print(f"wrote {len(entries)} images for {len(prompts)} prompts to {args.output_dir}")
    return 0
