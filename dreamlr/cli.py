"""`dreamlr <command>`: each command lives in its own module under dreamlr/commands/."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from dreamlr import __version__
from dreamlr.errors import UserError

# command name -> module under dreamlr.commands exposing `add_arguments(parser)`, `run(args)` and `HELP`
COMMANDS = {
    "train": "train",
    "generate": "generate",
    "score": "score",
    "text": "text",
    "export": "export",
    "import": "import_",
    "compare": "compare",
    "report": "report",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamlr", description="Personalize diffusion models with low-rank adapters.")
    parser.add_argument("--version", action="version", version=f"dreamlr {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"dreamlr.commands.{module_name}")
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user's mistake prints one line on stderr and exits with code 2."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"dreamlr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dreamlr {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
