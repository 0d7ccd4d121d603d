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


def run(args: argparse.Namespace) -> int:
    from dreamlr.errors import UserError
    from dreamlr.report import build_report
    from dreamlr.report.data import load
    from dreamlr.report.tables import main_table, to_markdown

    if args.output_dir is None and len(args.sources) > 1:
        raise UserError("several folders make one report: say where it goes with --output-dir DIR")
    output_dir = Path(args.output_dir or args.sources[0]).expanduser()
    path = build_report(args.sources, output_dir)
    print(to_markdown(main_table(load(args.sources))), end="")
    print(f"report: {path} (and report.md)")
    return 0
