"""Comparisons of adapter variants on equal terms (`dreamlr compare`): subjects, parameter matching, the
sweep that trains, generates and scores every variant, and the records the report reads.

`run_sweep` and `SweepSpec` load diffusers on first use.
"""

from dreamlr.compare.subjects import Subject, dreambench_subjects, subjects_from_dirs

_LAZY = {"SweepSpec": "sweep", "run_sweep": "sweep"}

__all__ = ["Subject", "SweepSpec", "dreambench_subjects", "run_sweep", "subjects_from_dirs"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"dreamlr.compare.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dreamlr.compare' has no attribute {name!r}")
