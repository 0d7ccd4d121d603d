"""The subjects of a comparison: folders of real images, each with its class noun, from a list of folders or
from a DreamBench dataset folder (google/dreambooth `dataset/` layout)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from dreamlr.errors import UserError
from dreamlr.evaluation.dreambench import PROMPT_LISTS, SUBJECT_CLASSES
from dreamlr.fileio import check_plain_name
from dreamlr.images import image_files

DREAMBENCH_INDEX = "prompts_and_classes.txt"
_CLASS_HEADER = "subject_name,class"
_LIST_HEADERS = {"Object Prompts": "object", "Live Subject Prompts": "live"}
_PROMPT_LINE = re.compile(r"""^'(.*)'\.format\(unique_token, class_token\),?$""")


@dataclass(frozen=True)
class Subject:
    """One subject: its name (the folder's), its real images and its class noun."""

    name: str
    images: Path
    class_name: str
    prompt_lists: dict[str, tuple[str, ...]] | None = None  # the dataset's own object/live prompt lists

    def instance_prompt(self, token: str) -> str:
        """The training prompt, DreamBooth's `a photo of <token> <class>`."""
        return f"a photo of {token} {self.class_name}"


def subjects_from_dirs(folders: list[str], class_names: list[str] | None = None) -> list[Subject]:
    """Subjects from image folders; classes from `class_names` (one for all, or one per folder), else the
    DreamBench class of a folder with a DreamBench subject's name."""
    if not folders:
        raise UserError("--subjects lists no folders; give DIR1,DIR2 or --dreambench DIR")
    class_names = class_names or []
    if len(class_names) not in (0, 1, len(folders)):
        raise UserError(f"--class-name gives {len(class_names)} classes for {len(folders)} subjects; "
                        "give one for all or one per subject")
    subjects = []
    for index, folder in enumerate(folders):
        path = Path(folder).expanduser().resolve()
        image_files(path, "subject")  # must exist and hold images
        check_plain_name(path.name, f"subject folder '{folder}': its name")
        if class_names:
            class_name = class_names[index if len(class_names) > 1 else 0]
        elif path.name in SUBJECT_CLASSES:
            class_name = SUBJECT_CLASSES[path.name]
        else:
            raise UserError(f"subject '{folder}': give its class noun with --class-name (e.g. --class-name mug)")
        subjects.append(Subject(path.name, path, class_name))
    return _unique(subjects)


def dreambench_subjects(root: str | os.PathLike, names: list[str] | None = None) -> list[Subject]:
    """Subjects of a DreamBench dataset folder: the subject folders its `prompts_and_classes.txt` lists that
    are present (or only `names`), in the file's order."""
    root = Path(root).expanduser().resolve()
    index = root / DREAMBENCH_INDEX
    if not root.is_dir():
        raise UserError(f"--dreambench '{root}' does not exist")
    if not index.is_file():
        raise UserError(f"--dreambench '{root}' has no {DREAMBENCH_INDEX}; give the DreamBooth dataset folder "
                        "(subject folders + prompts_and_classes.txt)")
    classes = read_subject_classes(index)
    lists = read_prompt_lists(index)
    if names:
        unknown = [n for n in names if n not in classes]
        if unknown:
            raise UserError(f"--dreambench-subjects: {', '.join(unknown)} not listed in '{index}'")
        missing = [n for n in names if not (root / n).is_dir()]
        if missing:
            raise UserError(f"--dreambench-subjects: no folder '{root / missing[0]}'")
    chosen = names or [n for n in classes if (root / n).is_dir()]
    if not chosen:
        raise UserError(f"--dreambench '{root}' holds none of the subject folders {DREAMBENCH_INDEX} lists")
    subjects = []
    for name in chosen:
        image_files(root / name, "subject")
        subjects.append(Subject(name, root / name, classes[name], lists))
    return _unique(subjects)


def read_subject_classes(path: Path) -> dict[str, str]:
    """subject name -> class noun from the `subject_name,class` block of `prompts_and_classes.txt`; a subject
    name must be a plain folder name (it names folders of the sweep)."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    if _CLASS_HEADER not in lines:
        raise UserError(f"'{path}' has no '{_CLASS_HEADER}' line; is it DreamBooth's {DREAMBENCH_INDEX}?")
    classes = {}
    for line in lines[lines.index(_CLASS_HEADER) + 1:]:
        if not line:
            break
        name, sep, class_name = line.partition(",")
        if sep and name.strip() and class_name.strip():
            check_plain_name(name.strip(), f"'{path}': subject")
            classes[name.strip()] = class_name.strip()
    return classes


def read_prompt_lists(path: Path) -> dict[str, tuple[str, ...]] | None:
    """The `Object Prompts` and `Live Subject Prompts` lists of `prompts_and_classes.txt` as `{token}`/`{class}`
    templates (google/dreambooth writes each as `'a {0} {1} in the snow'.format(unique_token, class_token)`);
    None when the file has neither or they are DreamBench's own (the built-in lists then apply)."""
    lists: dict[str, list[str]] = {}
    kind = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if line in _LIST_HEADERS:
            kind = _LIST_HEADERS[line]
            lists[kind] = []
            continue
        match = _PROMPT_LINE.match(line)
        if kind and match:
            lists[kind].append(match.group(1).replace("{0}", "{token}").replace("{1}", "{class}"))
    found = {k: tuple(v) for k, v in lists.items() if v}
    if not found:
        return None
    if set(found) != set(_LIST_HEADERS.values()):
        raise UserError(f"'{path}' lists only {next(iter(found))} prompts; give both the 'Object Prompts' and the "
                        "'Live Subject Prompts' lists, or neither (then DreamBench's own lists apply)")
    return None if found == PROMPT_LISTS else found


def _unique(subjects: list[Subject]) -> list[Subject]:
    seen: dict[str, Path] = {}
    for subject in subjects:
        if subject.name in seen:
            raise UserError(f"two subjects are named '{subject.name}' ('{seen[subject.name]}' and "
                            f"'{subject.images}'); subjects are named by their folder, so rename one")
        seen[subject.name] = subject.images
    return subjects
