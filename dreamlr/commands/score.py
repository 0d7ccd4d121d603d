"""`dreamlr score`: CLIP-I, CLIP-T and DINO of generated images against reference images."""

from __future__ import annotations

import argparse

from dreamlr.evaluation.dreambench import CLIP_DEFAULT, DINO_DEFAULT

HELP = "Score generated images against reference images (CLIP-I, CLIP-T, DINO) on the DreamBench protocol."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generated", required=True, metavar="DIR",
                        help="folder written by `dreamlr generate` (images + manifest.jsonl)")
    parser.add_argument("--reference", required=True, metavar="DIR", help="folder of real images of the subject")
    parser.add_argument("--clip", default=CLIP_DEFAULT, metavar="SPEC",
                        help=f"open_clip ARCH:PRETRAINED, ARCH:FILE, a weights file or folder, or `tiny` "
                             f"(default {CLIP_DEFAULT})")
    parser.add_argument("--dino", default=DINO_DEFAULT, metavar="SPEC",
                        help=f"timm model name, NAME:FILE, a weights file or folder, or `tiny` "
                             f"(default {DINO_DEFAULT})")
    parser.add_argument("--output", required=True, metavar="FILE.json",
                        help="report to write; the .md and .csv tables go beside it")
    parser.add_argument("--overwrite", action="store_true", help="replace the report files if they exist")


def run(args: argparse.Namespace) -> int:
    from dreamlr.commands._checks import check_input_folders, check_output_file

    check_output_file(args.output, "--output", "scores.json")
    check_input_folders("--reference", [args.reference])
    from dreamlr.evaluation.score import score_folder
    from dreamlr.evaluation.tables import markdown_table

    report = score_folder(args.generated, args.reference, args.output, clip=args.clip, dino=args.dino,
                          overwrite=args.overwrite)
    print(markdown_table(report).split("\n## Per prompt")[0].rstrip())
    return 0
