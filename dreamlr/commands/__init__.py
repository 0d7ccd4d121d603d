"""One module per CLI command: `HELP`, `add_arguments(parser)` and `run(args) -> exit code`."""
