"""`dreamlr compare` on the built-in `tiny` model with the demo subject: a finished sweep, numbers that match
each run's own score JSON, resume, a failing variant, parameter matching, DreamBench folders, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from dreamlr.cli import main
from dreamlr.compare.matching import match_rank
from dreamlr.compare.subjects import dreambench_subjects
from dreamlr.compare.sweep import SweepSpec, plan_ranks, resolve_config, split_overrides, subject_prompts
from dreamlr.diffusion import train as train_module
from dreamlr.errors import UserError

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo_subject"
DREAMBENCH = Path(__file__).resolve().parents[2] / "shared/data/dreambench"
FAST = ["--set", "max_train_steps=3", "--set", "resolution=32", "--set", "num_validation_images=0",
        "--set", "checkpointing_steps=1", "--set", "learning_rate=0.01"]


PER_VARIANT = ["--set", "dora:learning_rate=0.02"]  # the module's sweep trains dora at its own learning rate


def compare_args(out: Path, prompts: Path, variants: str = "lora,dora", *extra: str) -> list[str]:
    return ["compare", "--config", str(REPO / "configs" / "tiny-demo.yaml"), "--variants", variants,
            "--subjects", str(DEMO), "--class-name", "mug", "--output-dir", str(out), "--prompts", str(prompts),
            "--num-images", "1", "--steps", "2", "--clip", "tiny", "--dino", "tiny", *FAST, *extra]


def prompt_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "prompts.txt"
    path.write_text("a {token} {class} on the beach\na red {token} {class}\n")
    return path


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The main results table of a report.md: row title -> cells (bold and italics removed)."""
    section = markdown.split("## Results")[1].split("\n\n")[1]
    rows = {}
    for line in section.splitlines()[2:]:
        cells = [re.sub(r"[*]", "", c).strip() for c in line.strip("|").split(" | ")]
        rows[cells[0]] = cells[1:]
    return rows


def means(cells: list[str]) -> list[str]:
    """The means of `mean ± half-width` cells."""
    return [cell.split(" ± ")[0] for cell in cells]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A finished two-variant sweep (lora, dora at its own learning rate) on the demo subject."""
    root = tmp_path_factory.mktemp("sweep")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DREAMLR_CACHE", str(root / "cache"))
        assert main(compare_args(root / "out", prompt_file(root), "lora,dora", *PER_VARIANT)) == 0
    return root / "out"


@pytest.fixture
def calls(monkeypatch) -> list:
    """Every call of the trainer, as (variant, resume_from_checkpoint)."""
    seen = []
    real_train = train_module.train

    def counting(config):
        seen.append((config.adapter["variant"], config.resume_from_checkpoint))
        return real_train(config)

    monkeypatch.setattr(train_module, "train", counting)
    return seen


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMLR_CACHE", str(tmp_path / "cache"))


def test_sweep_writes_reports_whose_table_matches_each_runs_score_json(sweep):
    assert (sweep / "report.md").is_file() and (sweep / "report.html").is_file()
    for name in ("loss", "parameters", "grid-demo_subject", "subject-demo_subject"):
        assert (sweep / "figures" / f"{name}.png").is_file()
    rows = table_rows((sweep / "report.md").read_text())
    for variant, title in (("lora", "lora"), ("dora", "dora †")):  # † trained with its own --set keys
        record = json.loads((sweep / "results" / f"{variant}.json").read_text())
        scores = json.loads((sweep / "runs" / variant / "demo_subject" / "eval" / "scores.json").read_text())
        assert record["status"] == "done" and record["metrics"] == scores["overall"]
        # one subject, one seed: the subject-weighted mean is the mean over its images
        assert means(rows[title][2:5]) == [f"{scores['overall'][m]['mean']:.3f}" for m in ("dino", "clip_i", "clip_t")]
        assert all(" ± " in cell for cell in rows[title][2:5])
        assert record["trainable_parameters"] == int(rows[title][1].replace(",", ""))
        adapter = sweep / "runs" / variant / "demo_subject" / "adapter.safetensors"
        assert record["adapter_bytes"] == adapter.stat().st_size
        assert record["final_loss"] > 0 and record["train_seconds"] > 0 and record["peak_memory_mb"] > 0
        assert record["adapter_memory_bytes"] == 16 * record["trainable_parameters"]  # fp32: param, grad, 2 moments
        steps = record["subjects"][0]["step_seconds"]
        assert steps["n"] == 3 and steps["p25"] <= steps["median"] <= steps["p75"]
        manifest = (sweep / record["subjects"][0]["images"] / "manifest.jsonl").read_text().splitlines()
        assert len(manifest) == 2
    base = json.loads((sweep / "base" / "demo_subject" / "scores.json").read_text())
    assert means(rows["base model (no adapter)"][2:5]) == [f"{base['overall'][m]['mean']:.3f}"
                                                           for m in ("dino", "clip_i", "clip_t")]
    assert means(rows["real images (leave-one-out)"][2:4]) == [f"{base['real_images'][m]['mean']:.3f}"
                                                               for m in ("dino", "clip_i")]

    def seeds(folder: Path) -> list[int]:
        return [json.loads(line)["seed"] for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert seeds(sweep / "runs/lora/demo_subject/eval/images") == seeds(sweep / "base/demo_subject/images")
    assert seeds(sweep / "runs/dora/demo_subject/eval/images") == seeds(sweep / "base/demo_subject/images")


def test_per_variant_set_reaches_only_that_variants_runs_and_the_report(sweep):
    def learning_rate(variant: str) -> float:
        config = yaml.safe_load((sweep / "runs" / variant / "demo_subject" / "config.yaml").read_text())
        return config["learning_rate"]
    assert learning_rate("dora") == 0.02 and learning_rate("lora") == 0.01
    assert json.loads((sweep / "sweep.json").read_text())["variant_overrides"] == {"dora": {"learning_rate": 0.02}}
    report = (sweep / "report.md").read_text()
    assert "Per-variant settings (on top of the shared ones): dora `learning_rate=0.02` (rows marked †)." in report
    assert "| dora † | " in report and "| lora | " in report and "| 0.02 | attn |" in report


def test_seeds_train_each_variant_per_seed_with_shared_image_seeds_and_the_reference_is_kept(tmp_path, capsys):
    out = tmp_path / "out"
    args = compare_args(out, prompt_file(tmp_path), "lora,singlora", "--seeds", "0,1", "--reference", "singlora")
    assert main(args) == 0
    record = json.loads((out / "results" / "lora.json").read_text())
    assert [(e["name"], e["seed"], e["status"]) for e in record["subjects"]] == [("demo_subject", 0, "done"),
                                                                                ("demo_subject", 1, "done")]
    for seed in (0, 1):
        config = yaml.safe_load((out / "runs" / "lora" / f"seed-{seed}" / "demo_subject" / "config.yaml").read_text())
        assert config["seed"] == seed

    def image_seeds(folder: Path) -> list[int]:
        return [json.loads(line)["seed"] for line in (folder / "manifest.jsonl").read_text().splitlines()]
    base = image_seeds(out / "base" / "demo_subject" / "images")
    assert image_seeds(out / "runs/lora/seed-1/demo_subject/eval/images") == base  # pairs with the base model
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["seeds"] == [0, 1] and sweep["reference"] == "singlora"
    report = (out / "report.md").read_text()
    assert "Training seeds: 0, 1 (images use seed 0)." in report and "Δ DINO vs singlora" in report
    assert "[lora] demo_subject (seed 1): trained" in capsys.readouterr().err


def test_changing_a_per_variant_key_retrains_only_that_variant(sweep, calls, tmp_path, capsys):
    copy = tmp_path / "out"
    shutil.copytree(sweep, copy)
    assert main(compare_args(copy, prompt_file(sweep.parent), "lora,dora", "--set", "dora:learning_rate=0.03")) == 0
    assert calls == [("dora", None)]
    err = capsys.readouterr().err
    assert "[lora] demo_subject: reused" in err and "[dora] demo_subject: trained" in err


def test_gpu_step_memory_is_the_allocator_peak_above_the_frozen_model(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from dreamlr.compare import cells
    from dreamlr.diffusion.models import load_components

    parts = load_components("tiny")
    weights = sum(p.numel() for m in (parts.unet, parts.vae, parts.text_encoder) for p in m.parameters())
    assert cells.frozen_model_mb("tiny", "no") == weights * 4 / 2**20
    assert cells.frozen_model_mb("tiny", "fp16") == weights * 2 / 2**20
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "peak_memory_mb": 1000.0}\n'
                                            '{"step": 2, "peak_memory_mb": 1200.0}\n')
    config = SimpleNamespace(pretrained_model_name_or_path="m", mixed_precision="fp16")
    monkeypatch.setattr(cells, "frozen_model_mb", lambda model, precision: 900.0)
    monkeypatch.setattr(cells.torch.cuda, "is_available", lambda: False)
    assert cells.gpu_step_memory(config, tmp_path) == {}  # a CPU's resident set says nothing of the adapter
    monkeypatch.setattr(cells.torch.cuda, "is_available", lambda: True)
    assert cells.gpu_step_memory(config, tmp_path) == {"frozen_model_mb": 900.0, "step_memory_mb": 300.0}


def test_split_overrides_tells_shared_keys_from_one_variants():
    shared, per_variant = split_overrides(["learning_rate=1e-4", "loraplus:adapter.lr_ratio=8",
                                           "loraplus:learning_rate=5e-5", "validation_prompt=a:b"])
    assert shared == {"learning_rate": 1e-4, "validation_prompt": "a:b"}
    assert per_variant == {"loraplus": {"adapter.lr_ratio": 8, "learning_rate": 5e-5}}


def test_running_again_reuses_every_finished_variant(sweep, calls, capsys):
    before = {v: json.loads((sweep / "results" / f"{v}.json").read_text())["metrics"] for v in ("lora", "dora")}
    assert main(compare_args(sweep, prompt_file(sweep.parent), "lora,dora", *PER_VARIANT)) == 0
    assert calls == []
    assert "[lora] demo_subject: reused" in capsys.readouterr().err
    assert {v: json.loads((sweep / "results" / f"{v}.json").read_text())["metrics"] for v in before} == before


def test_interrupted_sweep_resumes_the_unfinished_run_from_its_checkpoint(tmp_path, calls, monkeypatch):
    real_micro_step = train_module.micro_step
    state = {"dora_steps": 0}

    def dies_in_doras_third_step(config, *args, **kwargs):
        if config.adapter["variant"] == "dora":
            state["dora_steps"] += 1
            if state["dora_steps"] == 3:
                raise KeyboardInterrupt
        return real_micro_step(config, *args, **kwargs)

    monkeypatch.setattr(train_module, "micro_step", dies_in_doras_third_step)
    args = compare_args(tmp_path / "out", prompt_file(tmp_path))
    assert main(args) == 130
    assert not (tmp_path / "out" / "runs" / "dora" / "demo_subject" / "adapter.safetensors").exists()
    calls.clear()
    assert main(args) == 0
    assert calls == [("dora", "latest")]  # lora is finished and skipped; dora continues from step 2
    run = tmp_path / "out" / "runs" / "dora" / "demo_subject"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] and state["dora_steps"] == 4
    assert json.loads((tmp_path / "out" / "results" / "dora.json").read_text())["status"] == "done"


def test_a_failing_variant_is_reported_and_the_others_go_on(tmp_path, capsys):
    # dual_lora splits its rank in two halves, so an odd rank fails for it alone
    args = compare_args(tmp_path / "out", prompt_file(tmp_path), "dual_lora,lora", "--set", "adapter.rank=3")
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "dual_lora: failed: demo_subject: dual_lora splits rank evenly" in out
    failed = json.loads((tmp_path / "out" / "results" / "dual_lora.json").read_text())
    done = json.loads((tmp_path / "out" / "results" / "lora.json").read_text())
    assert failed["status"] == "failed" and "rank 3 is odd" in failed["error"]
    assert done["status"] == "done" and done["rank"] == 3
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| dual_lora (failed) |" in report and "## Failures" in report and "rank 3 is odd" in report
    assert means(table_rows(report)["lora"][2:3]) == [f"{done['metrics']['dino']['mean']:.3f}"]


def test_match_params_picks_ranks_with_near_equal_parameter_counts(tmp_path):
    spec = SweepSpec(config_file=str(REPO / "configs" / "tiny-demo.yaml"),
                     variants=["lora", "loraplus", "dora", "singlora", "dual_lora", "d2lora"],
                     subjects=dreambench_like(tmp_path, {"mug": "mug"}), output_dir=tmp_path / "out",
                     overrides={"adapter.rank": 4}, match="params")
    plan = plan_ranks(spec, log=lambda _: None)
    target = plan["lora"][1]
    assert target == 21504 and plan["loraplus"] == (4, target, target) and plan["d2lora"] == (2, target, target)
    assert plan["singlora"][0] == 8 and plan["dual_lora"][0] % 2 == 0
    for variant, (rank, count, wanted) in plan.items():
        assert wanted == target and abs(count - target) / target < 0.15, variant
    spec.overrides, spec.variants = {"adapter.rank": 3}, ["lora", "dual_lora"]  # odd: dual_lora alone could not
    assert plan_ranks(spec, log=lambda _: None)["dual_lora"][0] == 2


def test_match_params_runs_record_both_counts(tmp_path):
    out = tmp_path / "out"
    assert main(compare_args(out, prompt_file(tmp_path), "lora,singlora", "--match", "params")) == 0
    record = json.loads((out / "results" / "singlora.json").read_text())
    assert record["rank"] == 8 and record["matched_to"] == "lora"
    assert record["trainable_parameters"] == record["planned_parameters"] == 22528
    assert record["target_parameters"] == json.loads((out / "results" / "lora.json").read_text())[
        "trainable_parameters"] == 21504
    assert "22,528 (+4.8%)" in (out / "report.md").read_text()


def test_match_rank_finds_the_closest_rank_and_skips_ranks_that_do_not_fit():
    def count_at(rank: int) -> int:
        if rank > 10:
            raise UserError("rank too large")
        return 100 * rank + 7
    assert match_rank(count_at, 560) == (6, 607)  # 607 is 47 away, 507 is 53
    assert match_rank(count_at, 557) == (5, 507)  # a tie goes to the smaller rank
    assert match_rank(count_at, 5000) == (10, 1007)  # rank 49 would match, but 10 is the most that fits
    assert match_rank(lambda r: 50 * r, 260, step=2) == (6, 300)  # even ranks only: 200 or 300


def dreambench_like(root: Path, classes: dict[str, str]) -> list:
    """A DreamBooth-layout dataset folder with the demo images under each subject name."""
    dataset = root / "dataset"
    for name in classes:
        shutil.copytree(DEMO, dataset / name, ignore=shutil.ignore_patterns("*.txt"))
    lines = ["Classes", "", "subject_name,class", *(f"{n},{c}" for n, c in classes.items()), "", "Prompts", ""]
    (dataset / "prompts_and_classes.txt").write_text("\n".join(lines))
    return dreambench_subjects(dataset)


def test_dreambench_folder_gives_subjects_with_classes_and_their_prompt_list(tmp_path):
    subjects = dreambench_like(tmp_path, {"dog": "dog", "teapot": "teapot"})
    assert [(s.name, s.class_name) for s in subjects] == [("dog", "dog"), ("teapot", "teapot")]
    spec = SweepSpec(config_file=None, variants=["lora"], subjects=subjects, output_dir=tmp_path / "out")
    dog, teapot = (subject_prompts(spec, s) for s in subjects)
    assert len(dog) == len(teapot) == 25
    assert "a sks dog wearing a red hat" in [p.text for p in dog]
    assert "a sks teapot floating on top of water" in [p.text for p in teapot]
    assert subjects[0].instance_prompt("sks") == "a photo of sks dog"


def test_a_dreambench_file_with_only_one_prompt_list_is_refused(tmp_path):
    dreambench_like(tmp_path, {"dog": "dog"})
    index = tmp_path / "dataset" / "prompts_and_classes.txt"
    index.write_text(index.read_text() + "\n\nObject Prompts\n\nprompt_list = [\n"
                     "'a {0} {1} in the snow'.format(unique_token, class_token),\n]\n")
    with pytest.raises(UserError, match="lists only object prompts"):
        dreambench_subjects(tmp_path / "dataset")


def test_a_dreambench_folder_reached_through_a_symlink_is_recorded_resolved(tmp_path):
    dreambench_like(tmp_path, {"dog": "dog"})
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "dataset", target_is_directory=True)
    subjects = dreambench_subjects(link)
    spec = SweepSpec(config_file=None, variants=["lora"], subjects=subjects, output_dir=tmp_path / "out")
    config = resolve_config(spec, "lora", subjects[0])
    assert config.instance_data_dir == str((tmp_path / "dataset" / "dog").resolve()) == str((link / "dog").resolve())


@pytest.mark.skipif(not DREAMBENCH.is_dir(), reason="DreamBench data not present")
def test_the_real_dreambench_folder_is_read_in_its_file_order():
    subjects = dreambench_subjects(DREAMBENCH)
    names = [s.name for s in subjects]
    assert names == [n for n in ("backpack", "cat", "dog", "dog2", "rc_car", "robot_toy", "teapot", "vase")
                     if n in names] and len(names) >= 2
    assert {s.name: s.class_name for s in subjects}.get("rc_car", "toy") == "toy"
    assert all(s.prompt_lists is None for s in subjects)  # its lists are DreamBench's own: the built-ins apply
    assert [s.name for s in dreambench_subjects(DREAMBENCH, [names[1]])] == [names[1]]


@pytest.mark.skipif(not DREAMBENCH.is_dir(), reason="DreamBench data not present")
def test_compare_on_a_dreambench_subject_trains_on_its_class_prompt(tmp_path):
    args = ["compare", "--config", str(REPO / "configs" / "tiny-demo.yaml"), "--variants", "lora",
            "--dreambench", str(DREAMBENCH), "--dreambench-subjects", "dog", "--output-dir", str(tmp_path / "out"),
            "--max-prompts", "1", "--num-images", "1", "--steps", "2", "--clip", "tiny", "--dino", "tiny", *FAST,
            "--set", "with_prior_preservation=true", "--set", "num_class_images=1"]  # the config has no class_prompt
    assert main(args) == 0
    config = (tmp_path / "out" / "runs" / "lora" / "dog" / "config.yaml").read_text()
    assert "class_prompt: a photo of dog" in config
    # dreamlr records the resolved folder: compare resolved, so the test passes when ../shared is a symlink
    assert "instance_prompt: a photo of sks dog" in config and str((DREAMBENCH / "dog").resolve()) in config
    record = json.loads((tmp_path / "out" / "results" / "real_images.json").read_text())
    assert record["metrics"]["dino"]["n"] == len(list((DREAMBENCH / "dog").glob("*.jpg")))


@pytest.mark.parametrize("change, message", [
    (["--variants", "lora,qlora"], "unknown variant 'qlora' in --variants"),
    (["--subjects", "/no/such/subject"], "subject folder '/no/such/subject' does not exist"),
    (["--variants", "lora,lora"], "--variants names 'lora' twice"),
    (["--set", "output_dir=/tmp/x"], "--set output_dir: compare sets it"),
    (["--set", "no_such_key=1"], "unknown config key 'no_such_key'"),
    (["--max-prompts", "0"], "--max-prompts must be at least 1"),
    (["--set", "qlora:learning_rate=1"], "unknown variant 'qlora'"),
    (["--set", "d2lora:learning_rate=1"], "'d2lora' is not one of --variants (lora, dora)"),
    (["--set", "dora:no_such_key=1"], "--set dora:no_such_key: unknown config key"),
    (["--set", "dora:adapter.variant=lora"], "--set dora:adapter.variant: compare sets it"),
    (["--match", "params", "--set", "dora:adapter.rank=2"], "chooses the rank of every variant but the first"),
    (["--num-images", "0"], "--num-images must be at least 1"),
    (["--reference", "d2lora"], "--reference 'd2lora' is not one of --variants (lora, dora)"),
    (["--seeds", "0,x"], "--seeds '0,x': 'x' is not a whole number >= 0"),
    (["--seeds", "-1"], "'-1' is not a whole number >= 0"),
    (["--seeds", "1,1"], "--seeds '1,1' names a seed twice"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, change, message):
    args = compare_args(tmp_path / "out", prompt_file(tmp_path))
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args and flag != "--set":
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("dreamlr compare: error: ") and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change, message", [
    (["--set", "pretrained_model_name_or_path=/no/model"], "model '/no/model': no such file or folder"),
    (["--dino", "no_such_dino"], "DINO encoder 'no_such_dino': unknown"),
])
def test_a_model_or_encoder_that_cannot_load_stops_the_sweep_before_training(tmp_path, capsys, calls, change,
                                                                            message):
    args = [*compare_args(tmp_path / "out", prompt_file(tmp_path)), *change]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and calls == []


def test_dreambench_options_are_checked(tmp_path, capsys):
    base = ["compare", "--config", str(REPO / "configs" / "tiny-demo.yaml"), "--output-dir", str(tmp_path / "o")]
    assert main([*base, "--dreambench", str(DEMO)]) == 2
    assert "has no prompts_and_classes.txt" in capsys.readouterr().err
    dreambench_like(tmp_path, {"dog": "dog"})
    assert main([*base, "--dreambench", str(tmp_path / "dataset"), "--dreambench-subjects", "cat"]) == 2
    assert "cat not listed" in capsys.readouterr().err
    assert main([*base, "--subjects", str(DEMO)]) == 2
    assert "give its class noun with --class-name" in capsys.readouterr().err
