"""`dreamlr generate` on the tiny model: weighted adapters, seeds, manifest, atomic output, errors, and
generate -> score end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from dreamlr.adapters import AdapterConfig, adapter_layers, attach, detach, save_adapter, trainable_parameters
from dreamlr.cli import main
from dreamlr.diffusion import load_pipeline
from dreamlr.diffusion.generate import SCHEDULERS, apply_adapters, image_seed, set_scheduler
from dreamlr.errors import UserError
from dreamlr.evaluation import ManifestEntry, load_prompts, read_manifest, remove_token, write_manifest

FAST = ["--model", "tiny", "--steps", "2", "--token", "sks", "--class-name", "dog"]


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory) -> list[Path]:
    """Two tiny-model adapters (LoRA, DoRA) with non-zero deltas."""
    folder = tmp_path_factory.mktemp("adapters")
    pipe = load_pipeline("tiny")
    model = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    paths = []
    for seed, variant in enumerate(("lora", "dora")):
        attach(model, AdapterConfig(variant=variant, rank=2, targets=("to_q", "to_k")))
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            for name, tensor in trainable_parameters(model).items():
                if name.endswith("lora_B"):
                    tensor.normal_(0, 0.2)
        paths.append(save_adapter(model, folder / f"{variant}.safetensors", metadata={"base_model": "tiny"}))
        detach(model)
    return paths


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("# two prompts\na {token} {class} in the snow\n\na {token} {class} on the beach\n")
    return path


def weights_of(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in pipe.unet.state_dict().items()}


def test_weight_one_is_the_library_merge_and_weights_scale_deltas(adapter_files):
    lora, dora = adapter_files
    base = weights_of(load_pipeline("tiny"))
    reference = {}
    for path in (lora, dora):
        merged = load_pipeline("tiny", adapter=path, merge=True)
        reference[path] = {f"{name.removeprefix('unet.')}.weight": layer.base_layer.weight.detach().clone()
                           for name, layer in adapter_layers(torch.nn.ModuleDict({"unet": merged.unet}))}
    adapted = set(reference[lora])

    pipe = load_pipeline("tiny")
    apply_adapters(pipe, [lora], [1.0])
    mine = weights_of(pipe)
    assert not list(adapter_layers(pipe.unet))
    assert all(torch.equal(mine[k], reference[lora][k]) for k in adapted)  # bit-identical to merge=True
    assert all(torch.equal(mine[k], base[k]) for k in base if k not in adapted)

    pipe = load_pipeline("tiny")
    apply_adapters(pipe, [lora, dora], [0.5, -1.0])
    mine = weights_of(pipe)
    for key in adapted:
        expected = base[key] + 0.5 * (reference[lora][key] - base[key]) - (reference[dora][key] - base[key])
        torch.testing.assert_close(mine[key], expected, rtol=0, atol=1e-6)
        assert not torch.equal(mine[key], base[key])


def test_no_merge_keeps_one_adapter_live(adapter_files):
    pipe = load_pipeline("tiny")
    apply_adapters(pipe, adapter_files[:1], [1.0], merge=False)
    layers = list(adapter_layers(pipe.unet))
    assert layers and not any(layer.merged for _, layer in layers)
    with pytest.raises(UserError, match="--no-merge"):
        apply_adapters(load_pipeline("tiny"), adapter_files, [1.0, 1.0], merge=False)
    with pytest.raises(UserError, match="one per --adapter"):
        apply_adapters(load_pipeline("tiny"), adapter_files, [1.0])


def test_every_scheduler_name_builds_from_the_model_config():
    pipe = load_pipeline("tiny")
    betas = pipe.scheduler.betas.clone()
    for name, cls in SCHEDULERS.items():
        assert set_scheduler(pipe, name) == cls.__name__
        assert torch.equal(pipe.scheduler.betas, betas)
    assert set_scheduler(pipe, None) == type(pipe.scheduler).__name__


def test_image_seed_depends_on_run_seed_prompt_and_index_only():
    assert image_seed(0, "a dog", 1) == image_seed(0, "a dog", 1)
    assert len({image_seed(0, "a dog", i) for i in range(50)}) == 50
    assert image_seed(0, "a dog", 0) != image_seed(1, "a dog", 0) != image_seed(1, "a cat", 0)
    assert 0 <= image_seed(123, "x", 3) < 2**32


def test_prompts_and_token_removal(tmp_path, prompt_file):
    assert remove_token("a sks dog, sks-like, sksx", "sks") == "a dog, -like, sksx"
    prompts = load_prompts("dreambench:live", "sks", "dog")
    assert len(prompts) == 25 and prompts[0] == ("a sks dog in the jungle", "a dog in the jungle")
    assert load_prompts("dreambench", "sks", "cat")[12].text == "a sks cat wearing a rainbow scarf"
    teapot = load_prompts("dreambench", "sks", "teapot")
    assert teapot[12].text == "a sks teapot with the Eiffel Tower in the background"
    cleaned = [p.clean for p in load_prompts(str(prompt_file), "zwx", "toy")]
    assert cleaned == ["a toy in the snow", "a toy on the beach"]
    with pytest.raises(UserError, match="--class-name"):
        load_prompts(str(prompt_file), "sks")
    prompt_file.write_text("a {token} dog\na {token} dog\n")
    with pytest.raises(UserError, match="line 2 repeats"):
        load_prompts(str(prompt_file), "sks")


def test_manifest_round_trips(tmp_path):
    entries = [ManifestEntry(file=f"{i}.png", prompt="a sks dög", prompt_clean="a dög", seed=2**31 + i, model="tiny",
                             prompt_index=0, image_index=i, adapter=[{"path": "/x/a.safetensors", "weight": 0.5}],
                             settings={"steps": 2, "guidance": 7.5, "scheduler": None}) for i in range(3)]
    write_manifest(tmp_path / "manifest.jsonl", entries)
    assert read_manifest(tmp_path) == entries


def test_generate_then_score_end_to_end(tmp_path, prompt_file, adapter_files, capsys, monkeypatch):
    monkeypatch.setenv("DREAMLR_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "lora"
    assert main(["generate", *FAST, "--adapter", str(adapter_files[0]), "--prompts", str(prompt_file),
                 "--num-images", "2", "--batch-size", "3", "--seed", "7", "--scheduler", "euler_a",
                 "--output-dir", str(out)]) == 0
    entries = read_manifest(out)
    assert [(e.prompt_index, e.image_index) for e in entries] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert entries[2].prompt == "a sks dog on the beach" and entries[2].prompt_clean == "a dog on the beach"
    assert entries[0].seed == image_seed(7, "a dog in the snow", 0)
    assert entries[0].adapter[0]["path"] == str(adapter_files[0].resolve()) and entries[0].adapter[0]["weight"] == 1
    settings = entries[0].settings
    assert settings["scheduler"] == "EulerAncestralDiscreteScheduler" and settings["resolution"] == 64
    assert settings["steps"] == 2 and settings["seed"] == 7 and settings["prompts"] == str(prompt_file)
    for entry in entries:
        with Image.open(out / entry.file) as image:
            assert image.size == (64, 64)
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {"file", "prompt", "prompt_clean", "seed", "model", "adapter", "settings"} <= set(lines[0])
    write_manifest(tmp_path / "copy" / "manifest.jsonl", entries)
    assert read_manifest(tmp_path / "copy") == entries

    reference = tmp_path / "reference"
    reference.mkdir()
    for i, entry in enumerate(entries[:2]):  # any images will do as references
        Image.open(out / entry.file).rotate(90 * (i + 1)).save(reference / f"r{i}.png")
    report_path = tmp_path / "scores.json"
    assert main(["score", "--generated", str(out), "--reference", str(reference), "--clip", "tiny", "--dino", "tiny",
                 "--output", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["overall"]["clip_t"]["n"] == 4 and report["real_images"]["dino"]["n"] == 2
    assert [row["prompt"] for row in report["per_prompt"]] == ["a sks dog in the snow", "a sks dog on the beach"]
    assert "| generated |" in capsys.readouterr().out


def test_same_prompt_and_index_give_the_same_image_across_runs(tmp_path, prompt_file, adapter_files):
    both, alone, adapted = tmp_path / "both", tmp_path / "alone", tmp_path / "adapted"
    beach = tmp_path / "beach.txt"
    beach.write_text("a {token} {class} on the beach\n")
    assert main(["generate", *FAST, "--prompts", str(prompt_file), "--num-images", "2", "--batch-size", "4",
                 "--output-dir", str(both)]) == 0
    assert main(["generate", *FAST, "--prompts", str(beach), "--num-images", "2", "--batch-size", "1",
                 "--output-dir", str(alone)]) == 0
    assert main(["generate", *FAST, "--prompts", str(beach), "--num-images", "2", "--adapter", str(adapter_files[0]),
                 "--weights", "0.5", "--output-dir", str(adapted)]) == 0
    pixels = lambda folder, entry: np.asarray(Image.open(folder / entry.file), dtype=np.int16)  # noqa: E731
    in_both = {(e.prompt, e.image_index): e for e in read_manifest(both)}
    for entry, with_adapter in zip(read_manifest(alone), read_manifest(adapted)):
        twin = in_both[(entry.prompt, entry.image_index)]
        assert twin.seed == entry.seed == with_adapter.seed
        assert np.abs(pixels(both, twin) - pixels(alone, entry)).max() <= 1  # batch size changes rounding only
        assert with_adapter.adapter[0]["weight"] == 0.5


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["generate", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("extra, fragment", [
    (["--prompts", "missing.txt"], "prompt file 'missing.txt' does not exist"),
    (["--prompts", "dreambench:people"], "unknown DreamBench list"),
    (["--prompts", "dreambench:live", "--scheduler", "magic"], "--scheduler 'magic' is unknown"),
    (["--prompts", "dreambench:live", "--resolution", "100"], "multiple of 8"),
    (["--prompts", "dreambench:live", "--num-images", "0"], "--num-images must be at least 1"),
    (["--prompts", "dreambench:live", "--weights", "1,x", "--adapter", "a"], "--weights '1,x'"),
    (["--prompts", "dreambench:live", "--weights", "1,1", "--adapter", "a"], "2 weight(s) for 1 adapter(s)"),
    (["--prompts", "dreambench:live", "--adapter", "missing.safetensors"], "'missing.safetensors' does not exist"),
    (["--prompts", "dreambench:live", "--model", "no/such-model"], "not found locally, and the hub is offline"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, extra, fragment):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(capsys, *FAST, *extra, "--output-dir", str(tmp_path / "out"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("dreamlr generate: error: ") and fragment in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_dreambench_without_class_and_non_empty_output(tmp_path, capsys, adapter_files):
    code, err = run_cli(capsys, "--model", "tiny", "--prompts", "dreambench", "--output-dir", str(tmp_path / "o"))
    assert code == 2 and "--class-name" in err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    code, err = run_cli(capsys, *FAST, "--prompts", "dreambench:live", "--output-dir", str(busy))
    assert code == 2 and "already holds files" in err and (busy / "keep.txt").read_text() == "mine"
    code, err = run_cli(capsys, *FAST, "--prompts", "dreambench:live", "--adapter", str(adapter_files[0]),
                        "--adapter", str(adapter_files[1]), "--no-merge", "--output-dir", str(tmp_path / "o"))
    assert code == 2 and "--no-merge keeps one adapter" in err and not (tmp_path / "o").exists()


def test_failure_mid_run_leaves_no_output(tmp_path, prompt_file, monkeypatch):
    calls = []
    original = StableDiffusionPipeline.__call__

    def fail_second_call(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", fail_second_call)
    out = tmp_path / "run"
    out.mkdir()  # an empty folder may be given; it stays as it was
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["generate", *FAST, "--prompts", str(prompt_file), "--num-images", "1", "--batch-size", "1",
              "--output-dir", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt", "run"] and not any(out.iterdir())
