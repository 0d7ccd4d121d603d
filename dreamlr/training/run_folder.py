"""The run folder: refuse to train into a folder that holds something else, check a resume trains what the
run recorded, and clear an interrupted run's temp files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dreamlr.config_files import rename_aliases
from dreamlr.errors import UserError
from dreamlr.fileio import empty_folder, inside, is_temp_name, remove_stale_temps


RUN_CONFIG = "config.yaml"
LOCATION_KEYS = ("output_dir", "resume_from_checkpoint")  # where a run is and how it was started


def check_run_folder(run_dir: Path, config: dict[str, Any], defaults: dict[str, Any], *, overwrite: bool,
                     may_change: tuple[str, ...], inputs: tuple[str | None, ...] = (),
                     aliases: dict[str, str] | None = None) -> None:
    """Refuse (UserError) to train into `run_dir` unless it is new or empty, `overwrite` is given, or the run
    resumes (`config["resume_from_checkpoint"]`) the run `run_dir` holds with the same training keys (all
    but LOCATION_KEYS and `may_change`; a key the recorded config lacks counts as its default, and one it
    records under an old name (`aliases`) counts under its new one).
    `overwrite` is refused when one of the run's `inputs` (data, model) lies in the folder it would empty."""
    resume = config.get("resume_from_checkpoint")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output_dir '{run_dir}' is a file; give a folder for the run")
    if resume and overwrite:
        raise UserError("--overwrite starts the run afresh and --resume continues it; give only one")
    held = [e for e in run_dir.iterdir() if not is_temp_name(e.name)] if run_dir.is_dir() else []
    for source in (s for s in inputs if s and held and overwrite):
        path = Path(source).expanduser().resolve()
        if path.exists() and (path == run_dir.resolve() or run_dir.resolve() in path.parents):
            raise UserError(f"--overwrite would delete '{source}', which this run reads, inside output_dir "
                            f"'{run_dir}'; give another output folder")
    if held and not overwrite:
        if not (run_dir / RUN_CONFIG).is_file():
            raise UserError(f"output_dir '{run_dir}' already holds files and is not a dreamlr run folder; give a new "
                            "or empty folder, or --overwrite to delete what it holds")
        if not resume:
            raise UserError(f"output_dir '{run_dir}' already holds a run; continue it with --resume latest, or "
                            "start afresh with --overwrite (deletes what the folder holds)")
    recorded = [run_dir / RUN_CONFIG] if held and not overwrite else []
    if resume and resume != "latest":  # a checkpoint folder of another run: its config counts too
        other = Path(resume).resolve().parent.parent / RUN_CONFIG
        if other.is_file() and other.parent.resolve() != run_dir.resolve():
            recorded.append(other)
    for path in recorded:
        _check_same_training(path, config, defaults, may_change, aliases or {})


def _check_same_training(path: Path, config: dict[str, Any], defaults: dict[str, Any],
                         may_change: tuple[str, ...], aliases: dict[str, str]) -> None:
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        old = None
    if not isinstance(old, dict):
        raise UserError(f"'{path}' is not a readable run config; resume cannot check what the run trained")
    old = rename_aliases(old, aliases, note=False)
    plain = json.loads(json.dumps({**defaults, **old}, default=str)), json.loads(json.dumps(config, default=str))
    skip = (*LOCATION_KEYS, *may_change)
    changed = sorted(k for k in plain[1] if k not in skip and plain[0].get(k) != plain[1][k])
    if changed:
        shown = ", ".join(f"{k} ({plain[0].get(k)!r} -> {plain[1].get(k)!r})" for k in changed[:4])
        raise UserError(f"--resume: the run in '{path.parent}' was trained with other settings ({RUN_CONFIG} "
                        f"-> now): {shown}{' …' if len(changed) > 4 else ''}; resume with the recorded ones, or "
                        "start afresh with --overwrite")


def start_run_folder(run_dir: Path, overwrite: bool) -> None:
    """Just before a run's first write: with `overwrite`, delete what `run_dir` holds (never the folder itself,
    never through a link); then remove the temp files an interrupted run of it left."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        empty_folder(run_dir)
    for folder in (run_dir, run_dir / "checkpoints", *_subfolders(run_dir / "samples")):
        inside(folder, run_dir)
        remove_stale_temps(folder)


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()] if folder.is_dir() else []
