"""`dreamlr report`: rebuild a comparison report from finished sweeps and run folders."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "rebuild report.md and report.html from `dreamlr compare` folders and/or `dreamlr train` run folders"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="RUN_DIR",
                        help="a `dreamlr compare` output folder or a `dreamlr train` run folder (several: one "
                             "report of all their rows)")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="where to write the report (default: the folder given, when there is one)")
    parser.add_argument("--reference", metavar="VARIANT",
                        help="the variant every sweep's paired differences and bold cells compare against "
                             "(default: each sweep's own, from `dreamlr compare --reference` or its first variant)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace report.md / report.html in an --output-dir that is not one of the folders given")


def run(args: argparse.Namespace) -> int:
    from dreamlr.errors import UserError
    from dreamlr.report import build_report
    from dreamlr.report.data import load
    from dreamlr.report.tables import main_table, to_markdown

    if args.output_dir is None and len(args.sources) > 1:
        raise UserError("several folders make one report: say where it goes with --output-dir DIR")
    output_dir = Path(args.output_dir or args.sources[0]).expanduser().resolve()  # `missing/../x` is x
    own = {Path(source).expanduser().resolve() for source in args.sources}
    existing = [name for name in ("report.md", "report.html") if (output_dir / name).exists()]
    if existing and output_dir not in own and not args.overwrite:
        raise UserError(f"--output-dir '{output_dir}' already holds {existing[0]}; choose another folder, or "
                        "--overwrite to replace the report")
    data = load(args.sources, args.reference)  # a bad --reference fails here, before anything is written
    path = build_report(args.sources, output_dir, args.reference)
    print(to_markdown(main_table(data)), end="")
    print(f"report: {path} (and report.md)")
    return 0
