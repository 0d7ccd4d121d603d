"""Nothing dreamlr writes or deletes lies outside the folder named on the command line: every command, with
hostile DreamBench subject names, symlinks and `..` in its path arguments, against a sibling `victim/` folder
whose contents and modification times must not change. Also: existing outputs are replaced only with
--overwrite, a symlinked output folder works, and stale temp files of an interrupted run are cleaned up."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_text_models import sentiment_rows, tiny_model, write_tsv

from dreamlr.cli import main
from dreamlr.compare.subjects import read_subject_classes
from dreamlr.diffusion.config import DreamBoothConfig
from dreamlr.diffusion.generate import Settings, generate_folder
from dreamlr.diffusion.train import train
from dreamlr.errors import UserError
from dreamlr.evaluation.prompts import load_prompts
from dreamlr.fileio import atomic_dir, inside, remove, remove_stale_temps

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo_subject"
QUICK = ["--set", "max_train_steps=2", "--set", "resolution=32", "--set", "num_validation_images=0",
         "--set", "checkpointing_steps=1"]
ENCODERS = ["--clip", "tiny", "--dino", "tiny"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """A finished tiny run (adapter + run folder) and a generated folder, built once, outside every sandbox."""
    root = tmp_path_factory.mktemp("made")
    config = DreamBoothConfig.from_sources(None, dict(
        instance_data_dir=str(DEMO), instance_prompt="a photo of sks mug", output_dir=str(root / "run"),
        resolution=32, max_train_steps=2, num_validation_images=0, adapter={"variant": "lora", "rank": 2}))
    run = train(config)
    generated = root / "generated"
    generate_folder("tiny", load_prompts("dreambench:object", "sks", "mug")[:1], generated,
                    Settings(num_images=1, steps=2, resolution=32))
    prompts = root / "prompts.txt"
    prompts.write_text("a {token} {class} on the beach\n")
    return {"run": run, "adapter": run / "adapter.safetensors", "generated": generated, "prompts": prompts}


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Path:
    """tmp/sandbox with a `victim/` folder full of the user's files, links to it and to an empty folder, and a
    subject folder; the cache lives outside the sandbox."""
    monkeypatch.setenv("DREAMLR_CACHE", str(tmp_path / "cache"))
    box = tmp_path / "sandbox"
    victim = box / "victim"
    (victim / "sub").mkdir(parents=True)
    for name in ("notes.md", "notes.csv", "sub/keep.txt", "config.txt"):
        (victim / name).write_text(f"the user's {name}")
    for name in ("trained.safetensors", "adapter.safetensors"):
        (victim / name).write_bytes(b"a trained adapter")
    Image.new("RGB", (32, 32), "blue").save(victim / "photo.png")  # a folder that could pass as a subject
    (box / "empty").mkdir()
    (box / "link-victim").symlink_to(victim)
    (box / "link-empty").symlink_to(box / "empty")
    shutil.copytree(DEMO, box / "subject", ignore=shutil.ignore_patterns("*.txt"))
    return box


def tree(folder: Path) -> dict[str, tuple]:
    """Every entry below `folder` (links not followed): files with size and mtime, links with their target."""
    found = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(top) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_file():
                stat = path.stat()
                found[rel] = ("file", stat.st_size, stat.st_mtime_ns)
            else:
                found[rel] = ("dir",)
    return found


def changed_outside(before: dict[str, tuple], after: dict[str, tuple], allowed: str | None) -> list[str]:
    """The entries that appeared, vanished or changed and do not lie in the `allowed` folder of the sandbox."""
    changes = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    return sorted(k for k in changes if allowed is None or not (k == allowed or k.startswith(allowed + "/")))


def dreambench_dataset(box: Path, hostile: str) -> Path:
    data = box / "data"
    shutil.copytree(DEMO, data / "mug", ignore=shutil.ignore_patterns("*.txt"))
    (data / "prompts_and_classes.txt").write_text(f"Classes\n\nsubject_name,class\nmug,mug\n{hostile},mug\n\n")
    return data


def figures_link(box: Path) -> Path:
    """An empty report folder whose `figures` is a link to the victim's folder (holding a figure-named file)."""
    (box / "victim" / "loss.png").write_bytes(b"the user's own picture")
    (box / "rep").mkdir()
    (box / "rep" / "figures").symlink_to(box / "victim")
    return box / "rep"


def command(case: str, box: Path, made: dict[str, Path], tmp_path_factory) -> tuple[list[str], int, str | None]:
    """(argv, expected exit code, the sandbox folder it may change) for one hostile or `..` case."""
    train = ["train", "--model", "tiny", "--instance-dir", str(box / "subject"), "--instance-prompt", "a sks mug",
             *QUICK]
    compare = ["compare", "--config", str(REPO / "configs" / "tiny-demo.yaml"), "--variants", "lora",
               "--prompts", str(made["prompts"]), "--num-images", "1", "--steps", "2", *ENCODERS, *QUICK]
    generate = ["generate", "--model", "tiny", "--prompts", str(made["prompts"]), "--class-name", "mug",
                "--num-images", "1", "--steps", "2", "--resolution", "32"]
    score = ["score", "--generated", str(made["generated"]), "--reference", str(box / "subject"), *ENCODERS]
    export = ["export", "--adapter", str(made["adapter"])]
    def text() -> list[str]:
        data = write_tsv(box.parent / "train.tsv", sentiment_rows(8))
        return ["text", "train", "--model", tiny_model("bert", tmp_path_factory), "--train", str(data),
                "--max-steps", "1", "--batch-size", "4", "--rank", "2", "--set", "max_length=8"]

    def report(output: str) -> list[str]:
        shutil.copytree(made["run"], box / "runcopy")
        (box / "victim" / "report.html").write_text("the user's own report")
        return ["report", f"{box}/subject/../runcopy", "--output-dir", output]

    cases = {
        "train into victim via ..": lambda: ([*train, "--output-dir", f"{box}/x/../victim"], 2, None),
        "train into a link to victim": lambda: ([*train, "--output-dir", str(box / "link-victim")], 2, None),
        "train with ..": lambda: ([*train, "--output-dir", f"{box}/x/../run"], 0, "run"),
        "text train into a link to victim": lambda: ([*text(), "--output-dir", str(box / "link-victim")], 2, None),
        "text train with ..": lambda: ([*text(), "--output-dir", f"{box}/x/../run"], 0, "run"),
        "generate into victim via ..": lambda: ([*generate, "--output-dir", f"{box}/x/../victim"], 2, None),
        "generate into a link to an empty folder": lambda: ([*generate, "--output-dir", str(box / "link-empty")], 0,
                                                            "empty"),
        "score beside the victim's notes": lambda: ([*score, "--output", str(box / "victim" / "notes.json")], 2,
                                                    None),
        "score via a link": lambda: ([*score, "--output", str(box / "link-victim" / "notes.json")], 2, None),
        "score over the victim's notes via ..": lambda: ([*score, "--output", f"{box}/x/../victim/notes.json"], 2,
                                                         None),
        "score with ..": lambda: ([*score, "--output", f"{box}/x/../scores/s.json"], 0, "scores"),
        "export kohya over a trained adapter": lambda: (
            [*export, "--format", "kohya", "--output", str(box / "victim" / "trained.safetensors")], 2, None),
        "export diffusers into victim": lambda: ([*export, "--format", "diffusers", "--output", str(box / "victim")],
                                                 2, None),
        "export peft into a link to victim": lambda: (
            [*export, "--format", "peft", "--output", str(box / "link-victim")], 2, None),
        "export kohya over a trained adapter via ..": lambda: (
            [*export, "--format", "kohya", "--output", f"{box}/x/../victim/trained.safetensors"], 2, None),
        "export with ..": lambda: ([*export, "--format", "kohya", "--output", f"{box}/x/../exp/k.safetensors"], 0,
                                   "exp"),
        "import over an adapter": lambda: (["import", "--lora", str(box.parent / "k.safetensors"), "--output",
                                            str(box / "link-victim" / "adapter.safetensors")], 2, None),
        "compare with an absolute subject name": lambda: (
            [*compare, "--dreambench", str(dreambench_dataset(box, str(box / "victim"))), "--output-dir",
             str(box / "sweep")], 2, None),
        "compare with a .. subject name": lambda: (
            [*compare, "--dreambench", str(dreambench_dataset(box, "../victim")), "--output-dir", str(box / "sweep")],
            2, None),
        "compare into the victim's folder": lambda: (
            [*compare, "--subjects", str(box / "subject"), "--class-name", "mug", "--output-dir",
             str(box / "link-victim")], 2, None),
        "compare with ..": lambda: ([*compare, "--subjects", f"{box}/x/../subject", "--class-name", "mug",
                                     "--output-dir", f"{box}/x/../sweep"], 0, "sweep"),
        "report with ..": lambda: (report(f"{box}/x/../rep"), 0, "rep"),
        "report into the victim's folder": lambda: (report(str(box / "link-victim")), 2, None),
        "report whose figures folder links to the victim": lambda: (report(str(figures_link(box))), 2, None),
    }
    return cases[case]()


CASES = ["train into victim via ..", "train into a link to victim", "train with ..",
         "text train into a link to victim", "text train with ..", "generate into victim via ..",
         "generate into a link to an empty folder", "score beside the victim's notes", "score via a link", "score over the victim's notes via ..",
         "score with ..", "export kohya over a trained adapter", "export diffusers into victim",
         "export peft into a link to victim", "export kohya over a trained adapter via ..", "export with ..", "import over an adapter",
         "compare with an absolute subject name", "compare with a .. subject name", "compare into the victim's folder", "compare with ..",
         "report with ..", "report into the victim's folder", "report whose figures folder links to the victim"]


@pytest.mark.parametrize("case", CASES)
def test_nothing_outside_the_named_folder_is_written_or_deleted(case, sandbox, made, tmp_path_factory, capsys):
    if case.startswith("import"):
        assert main(["export", "--adapter", str(made["adapter"]), "--format", "kohya", "--output",
                     str(sandbox.parent / "k.safetensors")]) == 0
    argv, expected, allowed = command(case, sandbox, made, tmp_path_factory)
    capsys.readouterr()
    before = tree(sandbox)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == expected, err
    if expected == 2:
        assert err.count("\n") == 1 and "Traceback" not in err, err
    assert changed_outside(before, tree(sandbox), allowed) == []
    if allowed:
        assert any(k.startswith(allowed + "/") for k in tree(sandbox)), f"nothing written into {allowed}"


def test_a_symlinked_output_folder_receives_the_images(sandbox, made):
    assert main(["generate", "--model", "tiny", "--prompts", str(made["prompts"]), "--class-name", "mug",
                 "--num-images", "2", "--steps", "2", "--resolution", "32",
                 "--output-dir", str(sandbox / "link-empty")]) == 0
    assert (sandbox / "link-empty").is_symlink()
    assert sorted(p.suffix for p in (sandbox / "empty").iterdir()) == [".jsonl", ".png", ".png"]
    assert not [p for p in sandbox.iterdir() if p.name.startswith(".")]


def test_existing_outputs_are_replaced_only_with_overwrite(sandbox, made, capsys):
    kohya = sandbox / "victim" / "trained.safetensors"
    export = ["export", "--adapter", str(made["adapter"]), "--format", "kohya", "--output", str(kohya)]
    assert main(export) == 2 and kohya.read_bytes() == b"a trained adapter"
    assert "already exists" in capsys.readouterr().err
    assert main([*export, "--overwrite"]) == 0 and kohya.read_bytes() != b"a trained adapter"

    folder = sandbox / "victim" / "sub"
    assert main(["export", "--adapter", str(made["adapter"]), "--format", "diffusers", "--output", str(folder)]) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["keep.txt"]

    imported = sandbox / "victim" / "adapter.safetensors"
    assert main(["import", "--lora", str(kohya), "--output", str(imported)]) == 2
    assert imported.read_bytes() == b"a trained adapter"
    assert main(["import", "--lora", str(kohya), "--output", str(imported), "--overwrite"]) == 0

    score = ["score", "--generated", str(made["generated"]), "--reference", str(sandbox / "subject"), *ENCODERS,
             "--output", str(sandbox / "victim" / "notes.json")]
    capsys.readouterr()
    assert main(score) == 2
    assert "notes.md' already exists" in capsys.readouterr().err
    assert (sandbox / "victim" / "notes.md").read_text() == "the user's notes.md"
    assert not (sandbox / "victim" / "notes.json").exists()
    assert main([*score, "--overwrite"]) == 0
    assert (sandbox / "victim" / "notes.md").read_text().startswith("#")


def test_stale_temp_files_of_an_interrupted_run_are_removed(sandbox, made):
    stale = [sandbox / ".g1.abcd_123.tmp", sandbox / ".s.json.zz99zz99.tmp", sandbox / ".s.md.a1b2c3d4.tmp",
             sandbox / ".k.safetensors.qwertyui.tmp"]
    stale[0].mkdir()
    (stale[0] / "000-00-x.png").write_bytes(b"half an image")
    for path in stale[1:]:
        path.write_bytes(b"half")
    kept = [sandbox / ".g2.abcd_123.tmp", sandbox / ".g1.tmp", sandbox / "g1.abcd_123.tmp"]  # others' names
    for path in kept:
        path.write_bytes(b"someone else's")
    assert main(["generate", "--model", "tiny", "--prompts", str(made["prompts"]), "--class-name", "mug",
                 "--num-images", "1", "--steps", "2", "--resolution", "32", "--output-dir", str(sandbox / "g1")]) == 0
    assert main(["score", "--generated", str(made["generated"]), "--reference", str(sandbox / "subject"),
                 *ENCODERS, "--output", str(sandbox / "s.json")]) == 0
    assert main(["export", "--adapter", str(made["adapter"]), "--format", "kohya", "--output",
                 str(sandbox / "k.safetensors")]) == 0
    assert [p for p in stale if p.exists()] == []
    assert all(p.read_bytes() == b"someone else's" for p in kept)


def test_dreambench_subject_names_must_be_plain_folder_names(tmp_path):
    index = tmp_path / "prompts_and_classes.txt"
    for name in ("/abs/victim", "../victim", "a/b", "..", "."):
        index.write_text(f"subject_name,class\ndog,dog\n{name},mug\n")
        with pytest.raises(UserError, match="not a plain folder name"):
            read_subject_classes(index)
    index.write_text("subject_name,class\ndog,dog\nrc_car,toy\n")
    assert read_subject_classes(index) == {"dog": "dog", "rc_car": "toy"}


def test_inside_remove_and_atomic_dir_follow_no_link_out(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (root / "out").symlink_to(outside)
    assert inside(root / "a" / ".." / "a", root) == (root / "a").resolve()
    for path in (root / ".." / "outside", root / "out" / "keep.txt", Path("/etc")):
        with pytest.raises(UserError, match="outside"):
            inside(path, root)
    with pytest.raises(UserError):
        remove(root / "out" / "keep.txt", root)
    remove(root / "out", root)  # the link goes, never what it points to
    assert not (root / "out").exists() and (outside / "keep.txt").exists()
    with pytest.raises(UserError):
        remove(root, root)

    (root / "link").symlink_to(outside)
    with atomic_dir(root / "link") as tmp:
        (tmp / "new.txt").write_text("new")
    assert (root / "link").is_symlink() and sorted(p.name for p in outside.iterdir()) == ["new.txt"]
    (root / ".x.abcdefgh.tmp").mkdir()
    assert remove_stale_temps(root, "y") == [] and remove_stale_temps(root, "x") == [root / ".x.abcdefgh.tmp"]


def test_a_folder_replaced_when_the_run_died_is_put_back(tmp_path):
    (tmp_path / ".step-2.abcdefgh.old").mkdir()  # atomic_dir moved step-2 aside, then the process died
    (tmp_path / ".step-2.abcdefgh.old" / "adapter.safetensors").write_text("step 2")
    (tmp_path / "step-4").mkdir()
    (tmp_path / ".step-4.abcdefgh.old").mkdir()  # its replacement arrived: the old one goes
    assert remove_stale_temps(tmp_path) == [tmp_path / ".step-4.abcdefgh.old"]
    assert (tmp_path / "step-2" / "adapter.safetensors").read_text() == "step 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-2", "step-4"]
