"""Personalization learns: a short DreamBooth run on the built-in `world` model (the committed weights under
assets/world/) raises the world-DINO similarity of `a photo of sks mug` generations to the subject's
reference images over the base model's, from the same initial noise -- the check that fails when training
stops learning (e.g. an optimizer that never steps the adapters, or gradients that never reach them)."""

from __future__ import annotations

from pathlib import Path

from dreamlr.cli import main as cli_main
from dreamlr.diffusion import load_pipeline
from dreamlr.evaluation.encoders import load_dino
from dreamlr.images import image_files, read_image
from dreamlr.world.assets import world_part
from dreamlr.world.personalization import generate, reference_embeddings, similarity

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "a photo of sks mug"


def test_short_dreambooth_on_the_world_raises_world_dino(tmp_path):
    subject = world_part("subjects") / "mug"
    run = tmp_path / "run"
    code = cli_main(["train", "--config", str(ROOT / "configs" / "quickstart.yaml"),
                     "--set", f"instance_data_dir={subject}", "--set", f"output_dir={run}",
                     "--set", "max_train_steps=150", "--set", "num_validation_images=0",
                     "--set", "checkpointing_steps=1000"])
    assert code == 0
    dino = load_dino("world")
    refs = reference_embeddings(dino, [read_image(p, "subject") for p in image_files(subject, "subject")])
    base = load_pipeline("world")
    tuned = load_pipeline("world", adapter=run / "adapter.safetensors", merge=True)
    before = similarity(dino, generate(base, PROMPT, 0, 4, steps=10), refs)
    after = similarity(dino, generate(tuned, PROMPT, 0, 4, steps=10), refs)
    assert after > before + 0.05, (before, after)
