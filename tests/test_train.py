"""Short DreamBooth runs on the built-in `tiny` model: every variant, prior preservation, text encoder,
gradient accumulation, resume, and the errors users see."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from dreamlr.adapters import VARIANTS
from dreamlr.cli import main
from dreamlr.diffusion import load_pipeline
from dreamlr.diffusion import train as train_module
from dreamlr.training import loop as loop_module
from dreamlr.diffusion.config import DreamBoothConfig

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo_subject"


def run_config(tmp_path: Path, **overrides) -> DreamBoothConfig:
    options = dict(
        pretrained_model_name_or_path="tiny", instance_data_dir=str(DEMO), instance_prompt="a photo of sks mug",
        output_dir=str(tmp_path / "run"), resolution=32, max_train_steps=3, learning_rate=1e-2,
        checkpointing_steps=100, validation_steps=100, num_validation_images=1, validation_inference_steps=2,
        adapter={"variant": "lora", "rank": 2, "targets": "attn"},
    )
    options.update(overrides)
    return DreamBoothConfig.from_sources(None, options)


@pytest.mark.parametrize("variant", ["dual_lora", "lora"])
def test_bf16_mixed_precision_trains_and_samples_from_the_cli(variant, tmp_path):
    """bf16 on the CPU: Dual LoRA's own autograd function and the validation images (the prepared UNet hands
    fp32 latents to a bf16 VAE) both work, as configs/sd15-dual-lora.yaml needs."""
    code = main(["train", "--config", str(REPO / "configs" / "tiny-demo.yaml"), "--variant", variant,
                 "--set", "mixed_precision=bf16", "--max-steps", "2", "--set", "validation_steps=2",
                 "--set", "num_validation_images=1", "--set", "validation_inference_steps=2", "--set", "resolution=32",
                 "--set", f"instance_data_dir={DEMO}", "--output-dir", str(tmp_path / "run")])
    assert code == 0
    assert (tmp_path / "run" / "samples" / "step-2" / "0.png").is_file()
    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "run" / "adapter.safetensors").values())


def generate(pipe, seed: int = 0):
    return pipe("a photo of sks mug", num_inference_steps=2, height=32, width=32, output_type="pt",
                generator=torch.Generator().manual_seed(seed)).images


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_and_the_adapter_changes_the_pipeline(variant, tmp_path):
    adapter = {"variant": variant, "rank": 2, "targets": "attn", "ramp_steps": 1, "warmup_steps": 1}
    run_dir = train_module.train(run_config(tmp_path, adapter=adapter))
    assert (run_dir / "adapter.safetensors").is_file()
    assert (run_dir / "README.md").read_text().count(variant) >= 1
    assert (run_dir / "samples" / "step-3" / "0.png").is_file()
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all({"loss", "lr", "seconds", "peak_memory_mb"} <= set(m) for m in metrics)
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["adapter"]["variant"] == variant and resolved["max_train_steps"] == 3

    base = generate(load_pipeline("tiny"))
    adapted = generate(load_pipeline("tiny", adapter=run_dir / "adapter.safetensors"))
    merged = generate(load_pipeline("tiny", adapter=run_dir / "adapter.safetensors", merge=True))
    assert (adapted - base).abs().max() > 1e-3
    torch.testing.assert_close(merged, adapted, rtol=0, atol=2e-3)


def test_two_runs_with_one_seed_are_identical(tmp_path):
    first = load_file(train_module.train(run_config(tmp_path / "a")) / "adapter.safetensors")
    second = load_file(train_module.train(run_config(tmp_path / "b")) / "adapter.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def train_interrupted(config: DreamBoothConfig, micro_steps: int, monkeypatch) -> None:
    """Run `config` and kill it (KeyboardInterrupt) inside micro-step `micro_steps + 1`, as a Ctrl-C would."""
    calls = {"n": 0}
    real = train_module.micro_step

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > micro_steps:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "micro_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train_module.train(config)
    monkeypatch.setattr(train_module, "micro_step", real)


CAPTIONS = dict(caption_dropout_rate=0.5, shuffle_caption=True, keep_tokens=1)


@pytest.mark.parametrize("captions", [{}, CAPTIONS], ids=["plain", "caption-options"])
def test_resume_after_interrupt_equals_uninterrupted(tmp_path, monkeypatch, captions):
    settings = dict(max_train_steps=6, checkpointing_steps=2, adapter={"variant": "dora", "rank": 2, "targets": "attn"},
                    lr_scheduler="linear", lr_warmup_steps=2, gradient_accumulation_steps=2, **captions)
    whole = load_file(train_module.train(run_config(tmp_path / "whole", **settings)) / "adapter.safetensors")

    train_interrupted(run_config(tmp_path / "split", **settings), 4 * 2, monkeypatch)  # dies in optimizer step 5
    run_dir = tmp_path / "split" / "run"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert not (run_dir / "adapter.safetensors").exists()

    train_module.train(run_config(tmp_path / "split", resume_from_checkpoint="latest", **settings))
    resumed = load_file(run_dir / "adapter.safetensors")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_caption_options_reach_the_text_encoder(tmp_path, monkeypatch):
    seen = []
    real = train_module.PromptEncoder.__call__
    monkeypatch.setattr(train_module.PromptEncoder, "__call__", lambda self, prompts: (seen.extend(prompts),
                                                                                      real(self, prompts))[1])
    instance = tmp_path / "inst"
    shutil.copytree(DEMO, instance)
    for path in instance.glob("*.png"):
        path.with_suffix(".txt").write_text("red mug, yellow stripes, white star, on a table")
    config = run_config(tmp_path, instance_data_dir=str(instance), max_train_steps=12, caption_prefix="sks",
                        num_validation_images=0, **CAPTIONS)
    train_module.train(config)
    assert "" in seen  # dropped captions
    kept = [p for p in seen if p]
    assert kept and all(p.startswith("sks red mug, ") for p in kept)
    assert len(set(kept)) > 1  # shuffled tags


def test_gradient_accumulation_steps_the_schedule_per_optimizer_step(tmp_path, monkeypatch):
    seen_steps = []
    real_set_step = train_module.set_step
    spy = lambda model, step: (seen_steps.append(step), real_set_step(model, step))  # noqa: E731
    monkeypatch.setattr(train_module, "set_step", spy)  # the resume step
    monkeypatch.setattr(loop_module, "set_step", spy)  # after each optimizer step
    config = run_config(tmp_path, max_train_steps=4, gradient_accumulation_steps=3, lr_scheduler="linear",
                        learning_rate=1e-3, adapter={"variant": "singlora", "rank": 2, "targets": "attn", "ramp_steps": 4})
    run_dir = train_module.train(config)
    assert seen_steps == [0, 1, 2, 3, 4]
    lrs = [json.loads(line)["lr"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-3 * (4 - s) / 4 for s in (1, 2, 3, 4)])


def test_prior_preservation_generates_class_images_once(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMLR_CACHE", str(tmp_path / "cache"))
    config = run_config(tmp_path, with_prior_preservation=True, class_prompt="a photo of mug", num_class_images=2)
    train_module.train(config)
    folders = list((tmp_path / "cache" / "class_images").iterdir())
    assert len(folders) == 1 and len(list(folders[0].glob("*.png"))) == 2
    before = {p: p.stat().st_mtime_ns for p in folders[0].glob("*.png")}

    generated = []
    monkeypatch.setattr(train_module, "pipeline_from_components", lambda parts: generated.append(1))
    train_module.train(run_config(tmp_path / "again", with_prior_preservation=True, class_prompt="a photo of mug",
                                  num_class_images=2, num_validation_images=0, validation_steps=100))
    assert not generated
    assert {p: p.stat().st_mtime_ns for p in folders[0].glob("*.png")} == before


def test_text_encoder_adapter_trains_at_its_own_rate(tmp_path):
    config = run_config(tmp_path, train_text_encoder=True, text_encoder_lr=5e-3,
                        text_encoder_adapter={"targets": "clip-attn", "rank": 2})
    run_dir = train_module.train(config)
    tensors = load_file(run_dir / "adapter.safetensors")
    assert any(k.startswith("text_encoder.") and k.endswith("q_proj.lora_B") for k in tensors)
    assert any(k.startswith("unet.") for k in tensors)
    te_b = [v for k, v in tensors.items() if k.startswith("text_encoder.") and k.endswith("lora_B")]
    assert any(t.abs().sum() > 0 for t in te_b)
    base = generate(load_pipeline("tiny"))
    assert (generate(load_pipeline("tiny", adapter=run_dir / "adapter.safetensors")) - base).abs().max() > 1e-3


def test_non_finite_loss_stops_with_one_line_and_keeps_the_checkpoint(tmp_path, monkeypatch, capsys):
    real_micro_step = train_module.micro_step
    calls = {"n": 0}

    def nan_after_two(*args, **kwargs):
        calls["n"] += 1
        loss = real_micro_step(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(train_module, "micro_step", nan_after_two)
    code = main(["train", "--model", "tiny", "--instance-dir", str(DEMO), "--instance-prompt", "a photo of sks mug",
                 "--output-dir", str(tmp_path / "run"), "--max-steps", "5", "--set", "resolution=32",
                 "--set", "checkpointing_steps=2", "--set", "num_validation_images=0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert "loss became nan at step 3" in err and "checkpoints/step-2" in err
    assert (tmp_path / "run" / "checkpoints" / "step-2" / "adapter.safetensors").is_file()
    assert not (tmp_path / "run" / "adapter.safetensors").exists()


def corrupt_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "corrupt"
    folder.mkdir()
    Image.new("RGB", (40, 40), "red").save(folder / "ok.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


@pytest.mark.parametrize("extra,message", [
    (["--instance-dir", "/nonexistent/subject"], "instance folder '/nonexistent/subject' does not exist"),
    (["--instance-dir", "{empty}"], "holds no images"),
    (["--instance-dir", "{corrupt}"], "broken.jpg': cannot be read as an image"),
    (["--variant", "lokr"], "unknown adapter variant 'lokr'; known variants: lora, loraplus"),
    (["--rank", "100000"], "rank 100000 is larger than module"),
    (["--set", "learning_rat=1e-4"], "unknown config key 'learning_rat' (did you mean 'learning_rate'?)"),
    (["--set", "learning_rate"], "expected key=value"),
    (["--set", "resolution=30"], "multiple of 8"),
    (["--set", "max_train_steps=ten"], "config key 'max_train_steps' must be int"),
    (["--set", "mixed_precision=fp16"], "fp16 needs a CUDA GPU"),
    (["--set", "with_prior_preservation=true"], "needs class_prompt"),
    (["--model", "./no/such/model"], "no such file or folder"),
    (["--config", "/nonexistent.yaml"], "config file '/nonexistent.yaml' does not exist"),
])
def test_bad_input_exits_2_with_one_line(extra, message, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["train", "--model", "tiny", "--instance-dir", str(DEMO), "--instance-prompt", "a photo of sks mug",
            "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--set", "resolution=32"]
    folders = {"empty": tmp_path / "empty", "corrupt": corrupt_folder(tmp_path)}
    extra = [e.format(**folders) for e in extra]
    code = main(args + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert "\n" not in err and "Traceback" not in err
    assert message in err, err
    assert not (tmp_path / "run" / "adapter.safetensors").exists()


def test_extends_and_shipped_configs_validate(tmp_path):
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = DreamBoothConfig.from_sources(str(path), {"instance_data_dir": str(DEMO),
                                                           "instance_prompt": "a photo of sks dog"})
        assert config.max_train_steps > 0
    singlora = DreamBoothConfig.from_sources(str(REPO / "configs" / "sd15-singlora.yaml"),
                                             {"instance_data_dir": "x", "instance_prompt": "p"})
    assert singlora.adapter["targets"] == "attn-qk" and singlora.resolution == 512
    assert singlora.unet_adapter_config().rank == 16


def test_bf16_mixed_precision_keeps_adapter_tensors_fp32(tmp_path):
    run_dir = train_module.train(run_config(tmp_path, mixed_precision="bf16", max_train_steps=2,
                                            num_validation_images=0))
    tensors = load_file(run_dir / "adapter.safetensors")
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values())
    assert all(t.abs().sum() > 0 for k, t in tensors.items() if k.endswith("lora_B"))
