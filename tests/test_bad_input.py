"""Bad input on the command line: exit code 2, exactly one line on stderr, no traceback, nothing written.

Every case fails before any model loads; each row builds what it needs under tmp_path (`{name}` in an
argument is the path of the fixture file or folder `name`).
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamlr.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo_subject"
STATE = {"step": 1, "optimizer": {}, "lr_scheduler": {}}  # what a dreamlr checkpoint's training_state.pt holds
TRAIN = ["train", "--model", "tiny", "--instance-dir", str(DEMO), "--instance-prompt", "a photo of sks mug",
         "--output-dir", "{run}", "--max-steps", "1", "--set", "resolution=32"]
TEXT = ["text", "train", "--model", "minilm", "--train", "{rows}", "--output-dir", "{run}", "--max-steps", "1"]
GENERATE = ["generate", "--model", "tiny", "--prompts", "{prompts}", "--class-name", "mug", "--num-images", "1",
            "--steps", "1", "--output-dir", "{gen}"]
SCORE = ["score", "--generated", "{generated}", "--reference", "{reference}", "--clip", "tiny", "--dino", "tiny",
         "--output", "{scores}"]
COMPARE = ["compare", "--config", "{config}", "--variants", "lora", "--subjects", "{subject}", "--class-name", "mug",
           "--output-dir", "{sweep}", "--max-prompts", "1", "--num-images", "1", "--steps", "1", "--clip", "tiny",
           "--dino", "tiny"]


def _image(path: Path, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _manifest_line(**changes) -> str:
    entry = {"file": "000.png", "prompt": "a sks dog", "prompt_clean": "a dog", "seed": 0, "model": "tiny"}
    return json.dumps({**entry, **changes}) + "\n"


def _checkpoint(run: Path, content: bytes) -> None:
    folder = run / "checkpoints" / "step-1"
    folder.mkdir(parents=True)
    (folder / "training_state.pt").write_bytes(content)
    (folder / "adapter.safetensors").write_bytes(b"")


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _sdxl_folder(root: Path, pipeline_class: str = "StableDiffusionXLPipeline", text_time: bool = True) -> None:
    """The configs of a diffusers folder of the SDXL family (no weights: the checks must not need them).
    The refiner has no first text encoder; SD3 has a transformer, not a UNet."""
    parts = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    if pipeline_class.startswith(("StableDiffusionXL", "StableDiffusion3")):
        parts |= {"text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                  "tokenizer_2": ["transformers", "CLIPTokenizer"]}
    if pipeline_class == "StableDiffusionXLImg2ImgPipeline":
        parts |= {"text_encoder": [None, None], "tokenizer": [None, None]}
    if pipeline_class == "StableDiffusion3Pipeline":
        parts |= {"transformer": ["diffusers", "SD3Transformer2DModel"]}
        del parts["unet"]
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps({"_class_name": pipeline_class, **parts}))
    (root / "unet").mkdir()
    unet = {"_class_name": "UNet2DConditionModel", "addition_embed_type": "text_time" if text_time else None}
    (root / "unet" / "config.json").write_text(json.dumps(unet))


def _build(tmp_path: Path) -> dict[str, str]:
    """Every fixture a row may name, made before the command runs (so the 'nothing written' check sees them)."""
    paths = {name: tmp_path / name for name in ("run", "gen", "sweep", "out")} | {"scores": tmp_path / "scores.json"}
    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "folder.yaml").mkdir()
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "rows.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    (tmp_path / "prompts.txt").write_text("a photo of {token} {class}\n")
    config = tmp_path / "config.yaml"
    config.write_text("pretrained_model_name_or_path: tiny\nresolution: 32\nmax_train_steps: 1\n")
    generated = tmp_path / "generated"
    generated.mkdir()
    _image(generated / "000.png")
    (generated / "manifest.jsonl").write_text(_manifest_line())
    bad_manifest = tmp_path / "bad_manifest"
    bad_manifest.mkdir()
    _image(bad_manifest / "000.png")
    (bad_manifest / "manifest.jsonl").write_text(_manifest_line(prompt_clean=5))
    reference = tmp_path / "reference"
    reference.mkdir()
    _image(reference / "ref.png", 1)
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "pickled.pt").write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    subject = tmp_path / "mug"
    subject.mkdir()
    _image(subject / "a.png")
    (subject / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for name, content in (("truncated", _torch_bytes(STATE)[:100]), ("foreign", pickle.dumps(["x"], protocol=2)),
                          ("keyless", _torch_bytes({"weights": torch.zeros(2)}))):
        _checkpoint(tmp_path / f"run_{name}", content)
    _sdxl_folder(tmp_path / "refiner", pipeline_class="StableDiffusionXLImg2ImgPipeline")
    _sdxl_folder(tmp_path / "sd3", pipeline_class="StableDiffusion3Pipeline")
    (tmp_path / "sd3_config.yaml").write_text(f"pretrained_model_name_or_path: {tmp_path / 'sd3'}\n")
    names = ("binary.yaml", "folder.yaml", "folder.json", "a_file", "a_folder", "rows.tsv", "prompts.txt",
             "config.yaml", "generated", "bad_manifest", "reference", "random.bin", "pickled.pt", "mug", "run_truncated",
             "run_foreign", "run_keyless", "refiner", "sd3", "sd3_config.yaml")
    keys = {n: n.replace(".", "_") if n == "folder.json" else n.split(".")[0] for n in names}
    return {**{k: str(v) for k, v in paths.items()}, **{keys[n]: str(tmp_path / n) for n in names},
            "subject": str(subject), "image": str(sorted(DEMO.glob("*.png"))[0])}


def _replace(argv: list[str], flag: str, value: str) -> list[str]:
    argv = list(argv)
    argv[argv.index(flag) + 1] = value
    return argv


CASES = [
    # 12.10: values that used to end in a TypeError / ValueError traceback, or were accepted
    ("lora_dropout=abc", TRAIN + ["--set", "adapter.lora_dropout=abc"], "lora_dropout must be a number, got 'abc'"),
    ("lr_ratio=abc", TRAIN + ["--set", "adapter.lr_ratio=abc"], "lr_ratio must be a number, got 'abc'"),
    ("tau=abc", TRAIN + ["--set", "adapter.tau=abc"], "tau must be a number, got 'abc'"),
    ("init_std=abc", TRAIN + ["--set", "adapter.init_std=abc"], "init_std must be a number"),
    ("residual=maybe", TRAIN + ["--set", "adapter.residual_after_projection=maybe"],
     "residual_after_projection must be true or false"),
    ("adam_beta1=1.5", TRAIN + ["--set", "adam_beta1=1.5"], "adam_beta1 must be in [0, 1), got 1.5"),
    ("adam_beta2=-0.1", TRAIN + ["--set", "adam_beta2=-0.1"], "adam_beta2 must be in [0, 1)"),
    ("adam_epsilon=-1", TRAIN + ["--set", "adam_epsilon=-1"], "adam_epsilon must be positive, got -1"),
    ("weight_decay=-1", TRAIN + ["--set", "weight_decay=-1"], "weight_decay must be 0 or more"),
    ("both decay names", TRAIN + ["--set", "weight_decay=0.1", "--set", "adam_weight_decay=0.1"],
     "config keys 'adam_weight_decay' and 'weight_decay' are the same setting"),
    ("text lr_warmup_steps=-5", TEXT + ["--set", "lr_warmup_steps=-5"], "lr_warmup_steps must be 0 or more"),
    ("lr_warmup_steps=-5", TRAIN + ["--set", "lr_warmup_steps=-5"], "lr_warmup_steps must be 0 or more, got -5"),
    ("max_grad_norm=-1", TRAIN + ["--set", "max_grad_norm=-1"], "max_grad_norm must be 0 or more"),
    # issue 17: caption keys
    ("caption_dropout_rate=1", TRAIN + ["--set", "caption_dropout_rate=1"], "caption_dropout_rate must be in [0, 1)"),
    ("keep_tokens=-1", TRAIN + ["--set", "keep_tokens=-1", "--set", "shuffle_caption=true"],
     "keep_tokens must be 0 or more, got -1"),
    ("keep_tokens without shuffle", TRAIN + ["--set", "keep_tokens=2"], "keep_tokens only applies with shuffle_caption"),
    ("ema_decay=1", TRAIN + ["--set", "ema_decay=1"], "ema_decay must be in (0, 1)"),
    ("shuffle_caption=maybe", TRAIN + ["--set", "shuffle_caption=maybe"], "shuffle_caption"),
    ("learning_rate=nan", TRAIN + ["--set", "learning_rate=.nan"], "'learning_rate' must be a finite number"),
    ("config binary", TRAIN + ["--config", "{binary}"], "is not a text file"),
    ("config folder", TRAIN + ["--config", "{folder}"], "is a folder; give a YAML file"),
    ("instance-dir an image", _replace(TRAIN, "--instance-dir", "{image}"), "is a file, not a folder"),
    ("output-dir a file", _replace(TRAIN, "--output-dir", "{a_file}"), "is an existing file, not a folder"),
    ("resume truncated", _replace(TRAIN, "--output-dir", "{run_truncated}") + ["--resume", "latest"],
     "training_state.pt cannot be read"),
    ("resume foreign", _replace(TRAIN, "--output-dir", "{run_foreign}") + ["--resume", "latest"],
     "training_state.pt cannot be read"),
    ("resume keyless", _replace(TRAIN, "--output-dir", "{run_keyless}") + ["--resume", "latest"],
     "is not a dreamlr training state (no step, optimizer, lr_scheduler)"),
    # 12.11: unknown keys point at --list-keys and the closest key
    ("unknown key", TRAIN + ["--set", "lerning_rate=1e-4"],
     "unknown config key 'lerning_rate' (did you mean 'learning_rate'?); `dreamlr train --list-keys`"),
    ("unknown adapter key", TRAIN + ["--set", "adapter.rnak=4"],
     "unknown adapter option(s) rnak (did you mean 'rank'?)"),
    ("text unknown key", TEXT + ["--set", "weight_decy=0.1"],
     "(did you mean 'weight_decay'?); `dreamlr text train --list-keys`"),
    # the text trainer's config
    ("text output-dir a file", _replace(TEXT, "--output-dir", "{a_file}"), "is an existing file, not a folder"),
    ("text weight_decay=-1", TEXT + ["--set", "weight_decay=-1"], "weight_decay must be 0 or more"),
    ("text lr_warmup_steps=-5", TEXT + ["--set", "lr_warmup_steps=-5"], "lr_warmup_steps must be 0 or more"),
    ("text max_grad_norm=-1", TEXT + ["--set", "max_grad_norm=-1"], "max_grad_norm must be 0 or more"),
    ("text adam_epsilon=0", TEXT + ["--set", "adam_epsilon=0"], "adam_epsilon must be positive"),
    ("text adam_beta1=1.5", TEXT + ["--set", "adam_beta1=1.5"], "adam_beta1 must be in [0, 1)"),
    ("text tau=abc", TEXT + ["--set", "adapter.tau=abc"], "tau must be a number"),
    ("text config binary", TEXT + ["--config", "{binary}"], "is not a text file"),
    ("text resume truncated", _replace(TEXT, "--output-dir", "{run_truncated}") + ["--resume", "latest"],
     "training_state.pt cannot be read"),
    ("compare subjects an image", _replace(COMPARE, "--subjects", "{image}"), "is a file, not a folder"),
    ("score reference an image", _replace(SCORE, "--reference", "{image}"), "is a file, not a folder"),
    ("score generated a file", _replace(SCORE, "--generated", "{a_file}"), "is a file; give the folder"),
    # outputs of the wrong kind
    ("score output a folder", _replace(SCORE, "--output", "{folder_json}"), "folder.json' is a folder; give a file"),
    ("import output a folder", ["import", "--lora", "{random}", "--output", "{a_folder}"], "is a folder; give a file"),
    # files that are not what they claim
    ("manifest prompt_clean: 5", _replace(SCORE, "--generated", "{bad_manifest}"),
     "'prompt_clean' must be str, not 5"),
    ("clip random bytes", _replace(SCORE, "--clip", "{random}"), "CLIP encoder"),
    ("clip pickle", _replace(SCORE, "--clip", "{pickled}"), "CLIP encoder"),
    ("dino random bytes", _replace(SCORE, "--dino", "{random}"), "DINO encoder"),
    # 12.8: non-finite float flags
    ("generate guidance nan", GENERATE + ["--guidance", "nan"], "--guidance must be a finite number, got nan"),
    ("generate guidance inf", GENERATE + ["--guidance", "inf"], "--guidance must be a finite number, got inf"),
    ("generate weights nan", GENERATE + ["--adapter", "{random}", "--weights", "nan"], "must be a finite number"),
    ("compare guidance nan", COMPARE + ["--guidance", "nan"], "--guidance must be a finite number"),
    ("export energy nan", ["export", "--adapter", "{random}", "--format", "kohya", "--output", "{out}",
                           "--energy", "nan"], "--energy must be a finite number"),
    # 12.11: compare calls a broken subject image a subject image
    ("compare broken subject image", COMPARE, "subject image '"),
    # 16: pipelines dreamlr cannot train are refused from model_index.json, before any weights load
    ("train sdxl refiner", _replace(TRAIN, "--model", "{refiner}"),
     "not a Stable Diffusion 1.x/2.x or SDXL base pipeline (a StableDiffusionXLImg2ImgPipeline without text_encoder, "
     "tokenizer)"),
    ("train sd3", _replace(TRAIN, "--model", "{sd3}"), "a StableDiffusion3Pipeline without unet"),
    ("generate sd3", _replace(GENERATE, "--model", "{sd3}"), "a StableDiffusion3Pipeline without unet"),
    ("compare sd3", _replace(_replace(COMPARE, "--config", "{sd3_config}"), "--subjects", str(DEMO)),
     "a StableDiffusion3Pipeline without unet"),
    ("train text_encoder_2_lr on sd", TRAIN + ["--set", "text_encoder_2_lr=1e-4"],
     "text_encoder_2_lr apply to SDXL's second text encoder, but model 'tiny' is Stable Diffusion 1.x/2.x"),
]


@pytest.mark.parametrize("argv, message", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DREAMLR_CACHE", str(tmp_path / "cache"))
    paths = _build(tmp_path)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    code = main([part.format(**paths) for part in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"dreamlr {argv[0]}: error: ") and message in err, err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("trained_on, loaded_on", [("tiny-sdxl", "tiny"), ("tiny", "tiny-sdxl")])
def test_an_adapter_exported_or_generated_on_the_other_model_kind_is_one_line(trained_on, loaded_on, tmp_path,
                                                                               capsys):
    from dreamlr.adapters import AdapterConfig, attach, save_adapter
    from dreamlr.diffusion import load_pipeline
    from dreamlr.diffusion.models import adapter_modules

    model = adapter_modules(load_pipeline(trained_on))
    attach(model, AdapterConfig(rank=2, targets="attn-qk"))
    adapter = tmp_path / "adapter.safetensors"
    save_adapter(model, adapter, metadata={"base_model": trained_on})
    (tmp_path / "prompts.txt").write_text("a photo of {token} {class}\n")
    for argv in (["export", "--adapter", str(adapter), "--format", "kohya", "--model", loaded_on,
                  "--output", str(tmp_path / "out.safetensors")],
                 ["generate", "--model", loaded_on, "--adapter", str(adapter), "--prompts", str(tmp_path / "prompts.txt"),
                  "--class-name", "mug", "--output-dir", str(tmp_path / "gen"), "--steps", "1", "--num-images", "1"]):
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.safetensors", "prompts.txt"]
    for fmt in ("kohya", "diffusers"):  # a LoRA file of one kind imported against the other
        lora = tmp_path / f"{fmt}.safetensors"
        assert main(["export", "--adapter", str(adapter), "--format", fmt, "--output", str(lora)]) == 0
        capsys.readouterr()
        code = main(["import", "--lora", str(lora), "--model", loaded_on, "--output", str(tmp_path / "back.safetensors")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "another base model" in err, err
        assert not (tmp_path / "back.safetensors").exists()


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (0, 0)
            for p in root.rglob("*")}
