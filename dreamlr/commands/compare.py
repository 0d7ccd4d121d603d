"""`dreamlr compare`: train, generate and score several adapter variants on equal terms, then report."""

from __future__ import annotations

import argparse
from pathlib import Path

from dreamlr.adapters.registry import VARIANTS
from dreamlr.evaluation.dreambench import CLIP_DEFAULT, DINO_DEFAULT, IMAGES_PER_PROMPT

HELP = ("compare adapter variants on the same subjects, data, seed, steps, prompts and scorer; writes "
        "report.md and report.html")
ALL_VARIANTS = ",".join(VARIANTS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="DreamBooth config (YAML, as for `dreamlr train`) every run starts from")
    parser.add_argument("--variants", default=ALL_VARIANTS, metavar="V1,V2,…",
                        help=f"variants to compare, the first one sets --match's target (default {ALL_VARIANTS})")
    subjects = parser.add_mutually_exclusive_group(required=True)
    subjects.add_argument("--subjects", metavar="DIR1,DIR2,…", help="folders of subject images")
    subjects.add_argument("--dreambench", metavar="DIR",
                          help="DreamBooth dataset folder (subject folders + prompts_and_classes.txt)")
    parser.add_argument("--dreambench-subjects", metavar="NAME,…",
                        help="with --dreambench: only these subjects (default: every subject folder present)")
    parser.add_argument("--class-name", metavar="NOUN[,NOUN…]",
                        help="with --subjects: the class noun, one for all or one per subject (default: the "
                             "DreamBench class of a folder named like a DreamBench subject)")
    parser.add_argument("--token", default="sks", help="rare token; runs train on 'a photo of TOKEN CLASS' (default sks)")
    parser.add_argument("--output-dir", required=True, metavar="DIR",
                        help="sweep folder; running again with the same folder reuses finished work")
    parser.add_argument("--match", choices=("params",),
                        help="params: choose each variant's rank so its trainable parameters match the first variant's")
    parser.add_argument("--prompts", default="dreambench", metavar="dreambench|FILE",
                        help="DreamBench list chosen by class (default), dreambench:object, dreambench:live, or a "
                             "text file (one prompt per line, {token} and {class} filled in)")
    parser.add_argument("--max-prompts", type=int, metavar="N", help="use the first N prompts")
    parser.add_argument("--num-images", type=int, default=IMAGES_PER_PROMPT,
                        help=f"images per prompt (default {IMAGES_PER_PROMPT})")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--clip", default=CLIP_DEFAULT, metavar="SPEC",
                        help=f"CLIP for CLIP-I / CLIP-T, as for `dreamlr score`, or `tiny` (default {CLIP_DEFAULT})")
    parser.add_argument("--dino", default=DINO_DEFAULT, metavar="SPEC",
                        help=f"DINO model, as for `dreamlr score`, or `tiny` (default {DINO_DEFAULT})")
    parser.add_argument("--reference", metavar="VARIANT",
                        help="the variant the report's paired differences and bold cells compare against "
                             "(default: the first of --variants)")
    parser.add_argument("--seeds", metavar="S1,S2,…",
                        help="train every variant once per seed (e.g. 0,1,2); the report's intervals then include "
                             "seed variation (default: the config's seed, one run)")
    parser.add_argument("--set", action="append", default=[], metavar="[VARIANT:]KEY=VALUE",
                        help="config key for every run, e.g. --set max_train_steps=400 --set adapter.rank=4, or for "
                             "one variant's runs, e.g. --set loraplus:learning_rate=5e-5 (repeatable)")


def _names(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def parse_seeds(text: str | None) -> list[int] | None:
    """--seeds `0,1,2` as distinct whole numbers >= 0 (None when not given)."""
    from dreamlr.errors import UserError

    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    bad = next((part for part in parts if not part.isdigit()), None)
    if bad is not None:
        raise UserError(f"--seeds {text!r}: {bad!r} is not a whole number >= 0; give e.g. --seeds 0,1,2")
    seeds = [int(part) for part in parts]
    if len(set(seeds)) < len(seeds):
        raise UserError(f"--seeds {text!r} names a seed twice")
    return seeds


def run(args: argparse.Namespace) -> int:
    from dreamlr.commands._checks import check_finite, check_input_folders
    from dreamlr.compare.subjects import dreambench_subjects, subjects_from_dirs
    from dreamlr.errors import UserError
    from dreamlr.images import image_files, read_image

    check_finite(args, "guidance")
    seeds = parse_seeds(args.seeds)
    check_input_folders("--subjects", _names(args.subjects))

    if args.dreambench_subjects and not args.dreambench:
        raise UserError("--dreambench-subjects needs --dreambench DIR")
    if args.class_name and args.dreambench:
        raise UserError("--class-name is for --subjects; DreamBench subjects take their class from "
                        "prompts_and_classes.txt")
    if args.dreambench:
        subjects = dreambench_subjects(args.dreambench, _names(args.dreambench_subjects))
    else:
        subjects = subjects_from_dirs(_names(args.subjects), _names(args.class_name))
    for subject in subjects:  # a broken subject image fails here, named as such, before any work
        for path in image_files(subject.images, "subject"):
            read_image(path, "subject")

    from dreamlr.compare.sweep import SweepSpec, run_sweep, split_overrides
    from dreamlr.report.data import load
    from dreamlr.report.tables import main_table, to_markdown

    output_dir = Path(args.output_dir).expanduser().resolve()  # `missing/../x` is x
    overrides, variant_overrides = split_overrides(args.set)
    spec = SweepSpec(config_file=args.config, variants=_names(args.variants), subjects=subjects,
                     output_dir=output_dir, overrides=overrides, variant_overrides=variant_overrides,
                     prompts=args.prompts,
                     max_prompts=args.max_prompts, token=args.token, num_images=args.num_images, steps=args.steps,
                     guidance=args.guidance, clip=args.clip, dino=args.dino, match=args.match,
                     reference=args.reference, seeds=seeds)
    results = run_sweep(spec)
    print(to_markdown(main_table(load([output_dir]))), end="")
    print(f"report: {output_dir / 'report.html'} (and report.md)")
    failed = [r for r in results if r["status"] != "done"]
    for record in failed:
        print(f"{record['label']}: {record['status']}: {record['error']}")
    return 1 if failed else 0
