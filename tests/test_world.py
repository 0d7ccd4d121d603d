"""The procedural world (dreamlr.world): deterministic scenes and captions, the caption grammar, the world
prompt lists, the tokenizer, the subjects' DreamBooth layout, the `world` built-in names, and a toy-size
run of scripts/build_world.py whose outputs load through dreamlr's own loaders."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

from dreamlr.cli import main as cli_main
from dreamlr.compare.subjects import dreambench_subjects
from dreamlr.compare.sweep import SweepSpec, subject_prompts
from dreamlr.errors import UserError
from dreamlr.evaluation.dreambench import LIVE_PROMPTS, OBJECT_PROMPTS
from dreamlr.evaluation.prompts import load_prompts
from dreamlr.world import Instance, Scene, caption, parse_caption, render, world_samples
from dreamlr.world.assets import ENV
from dreamlr.world.captions import describe
from dreamlr.world.instances import HELDOUT_PAIRS, SUBJECTS, is_reserved
from dreamlr.world.prompts import SUBSTITUTES, WORLD_LIVE_PROMPTS, WORLD_OBJECT_PROMPTS, fill
from dreamlr.world.sampling import sample_scene
from dreamlr.world.subjects import IMAGES_PER_SUBJECT, write_subjects
from dreamlr.world.tokenizer import save_tokenizer, world_tokenizer
from dreamlr.world.vocab import ACCESSORIES, CLASSES, CONTEXTS, PATTERNS, all_words

ROOT = Path(__file__).resolve().parents[1]


def _digest(image) -> str:
    return hashlib.sha256(np.asarray(image).tobytes()).hexdigest()


def test_rendering_and_sampling_are_deterministic():
    first = [(_digest(render(s)), c) for s, c in world_samples(seed=3, count=20)]
    again = [(_digest(render(s)), c) for s, c in world_samples(seed=3, count=20)]
    other = [(_digest(render(s)), c) for s, c in world_samples(seed=4, count=20)]
    assert first == again
    assert first != other


def test_every_class_renders_in_every_context():
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        backdrop = None
        for context in CONTEXTS:
            scene = Scene(Instance(cls, "red", "stripes", "yellow"), context=context, seed=1)
            pixels = np.asarray(render(scene))
            assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
            assert pixels.std() > 10, (cls, context)
            if context == "studio":
                backdrop = pixels
        # the object is there: a different class on the same backdrop gives different pixels
        other = next(c for c in CLASSES if c != cls)
        moved = np.asarray(render(Scene(Instance(other, "red", "stripes", "yellow"), context="studio", seed=1)))
        assert np.abs(backdrop.astype(int) - moved).mean() > 2
    assert len(CLASSES) >= 8 and len(CONTEXTS) - 1 >= 8
    sample_scene(rng)  # the sampler draws from the same tables


def test_captions_parse_back_to_their_scene():
    rng = np.random.default_rng(1)
    for scene, text in world_samples(seed=5, count=400):
        found = parse_caption(text)
        inst = scene.instance
        assert found["cls"] == inst.cls
        assert found["colour"] in (None, inst.colour)
        assert found["pattern"] in (None, inst.pattern)
        assert found["context"] in (None, scene.context if scene.context != "studio" else None)
        assert found["accessory"] in (None, scene.accessory)
        assert found["token"] is None
    full = describe(Scene(Instance("toy_car", "orange", "dots"), context="snow", size="large"), token="sks")
    assert full == "a large orange dotted sks toy car in the snow"
    assert parse_caption(full) == {"cls": "toy_car", "colour": "orange", "pattern": "dots", "size": "large",
                                   "finish": None, "accessory": None, "context": "snow", "token": "sks"}
    with pytest.raises(ValueError):
        parse_caption("a photo of a giraffe")
    assert caption(Scene(Instance("mug", "red")), rng).endswith("mug")


def test_world_prompt_lists_follow_dreambench_and_the_grammar():
    assert len(WORLD_OBJECT_PROMPTS) == len(OBJECT_PROMPTS) == 25 and len(WORLD_LIVE_PROMPTS) == 25
    assert len(set(WORLD_OBJECT_PROMPTS)) == 25 and len(set(WORLD_LIVE_PROMPTS)) == 25
    for world, bench in [*zip(WORLD_OBJECT_PROMPTS, OBJECT_PROMPTS), *zip(WORLD_LIVE_PROMPTS, LIVE_PROMPTS)]:
        assert world == SUBSTITUTES.get(bench, bench)
        found = parse_caption(fill(world, "dog"))
        assert found["token"] == "sks" and found["cls"] == "dog"
    for template in WORLD_OBJECT_PROMPTS:
        assert parse_caption(fill(template, "toy car"))["cls"] == "toy_car"
    used = {parse_caption(fill(t, "dog"))["context"] for t in WORLD_LIVE_PROMPTS + WORLD_OBJECT_PROMPTS}
    assert len(used - {None}) >= 8
    assert {parse_caption(fill(t, "dog"))["accessory"] for t in WORLD_LIVE_PROMPTS} - {None} <= set(ACCESSORIES)


def test_tokenizer_has_one_token_per_world_word_and_loads_from_its_files(tmp_path):
    tokenizer = world_tokenizer()
    for word in all_words():
        assert len(tokenizer(word).input_ids) == 3, word  # start, the word, end
    save_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").unlink()  # vocab.json + merges.txt alone are enough
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    text = "a photo of a sks robot toy wearing a red hat on top of a purple rug in a forest, café!"
    assert loaded(text).input_ids == tokenizer(text).input_ids


def test_subjects_and_heldout_pairs_are_never_sampled():
    for scene, _ in world_samples(seed=7, count=3000):
        assert not is_reserved(scene.instance)
        assert (scene.instance.cls, scene.context) not in HELDOUT_PAIRS
    assert len(SUBJECTS) >= 8 and {i.cls for i in SUBJECTS.values()} == set(CLASSES)
    assert all(p in PATTERNS for p in (i.pattern for i in SUBJECTS.values()))


def test_subject_folders_load_as_a_dreambench_dataset(tmp_path):
    root = write_subjects(tmp_path / "subjects")
    subjects = dreambench_subjects(root)
    assert [s.name for s in subjects] == list(SUBJECTS)
    for subject in subjects:
        assert subject.class_name == CLASSES[SUBJECTS[subject.name].cls]
        assert len(list(subject.images.glob("*.png"))) == IMAGES_PER_SUBJECT
    prompts = load_prompts(str(root / "prompts_live.txt"), "sks", "dog")
    assert len(prompts) == 25 and prompts[10].text == "a sks dog wearing a red hat"
    # `--dreambench` on the world's folder takes the world's own lists from prompts_and_classes.txt
    spec = SweepSpec(config_file=None, variants=["lora"], subjects=subjects, output_dir=tmp_path / "out")
    by_name = {s.name: s for s in subjects}
    mug = [p.text for p in subject_prompts(spec, by_name["mug"])]
    assert mug == [fill(t, "mug", "sks") for t in WORLD_OBJECT_PROMPTS]
    dog = [p.text for p in subject_prompts(spec, by_name["dog"])]
    assert dog == [fill(t, "dog", "sks") for t in WORLD_LIVE_PROMPTS]
    again = write_subjects(tmp_path / "again")

    def digest(folder: Path) -> list[str]:
        return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file())

    assert digest(root) == digest(again)


def test_world_names_say_the_weights_are_missing(tmp_path, monkeypatch, capsys):
    from dreamlr.diffusion.models import load_components
    from dreamlr.evaluation.encoders import load_clip, load_dino

    monkeypatch.setenv(ENV, str(tmp_path / "nowhere"))
    for load in (load_components, load_clip, load_dino):
        with pytest.raises(UserError, match="not built yet.*build_world.py"):
            load("world")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a mug\n")
    code = cli_main(["generate", "--model", "world", "--prompts", str(prompts), "--output-dir", str(tmp_path / "gen")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not built yet" in err[0]


@pytest.fixture(scope="module")
def toy_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world-build")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_world.py"), "--out", str(out), "--toy",
                             "--quiet", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result.stdout


def test_toy_build_writes_every_part_and_resumes(toy_world):
    out, stdout = toy_world
    world = out / "world"
    assert "[subjects] ..." in stdout
    for marker in ("model/model_index.json", "model/tokenizer/vocab.json", "clip/open_clip_config.json",
                   "clip/open_clip_model.safetensors", "dino/config.json", "dino/model.safetensors",
                   "subjects/prompts_and_classes.txt", "classifier/classifier.safetensors", "BUILD.json"):
        assert (world / marker).is_file(), marker
    assert not any(p.suffix in (".bin", ".pth", ".pkl") for p in world.rglob("*"))
    again = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_world.py"), "--out", str(out), "--toy",
                            "--quiet"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("done already") == 7


def test_toy_build_loads_as_the_world_builtins(toy_world, monkeypatch):
    from dreamlr.diffusion.models import load_components, pipeline_from_components
    from dreamlr.evaluation.encoders import load_clip, load_dino

    out, _ = toy_world
    monkeypatch.setenv(ENV, str(out / "world"))
    parts = load_components("world")
    pipe = pipeline_from_components(parts)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a sks mug in the snow", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    clip = load_clip("world")
    assert clip.spec == "world" and clip.size == 64
    images = [render(s) for s, _ in world_samples(0, 3)]
    assert clip.embed_images(images).shape[0] == 3
    assert clip.embed_texts(["a red mug", "a photo of a cat in the snow"]).shape[0] == 2
    dino = load_dino("world")
    assert dino.spec == "world" and dino.embed_images(images).shape[0] == 3


def test_quality_checks_run_on_the_toy_build(toy_world, monkeypatch):
    from dreamlr.diffusion import load_pipeline
    from dreamlr.evaluation.encoders import load_clip, load_dino
    from dreamlr.world.classifier import HEADS, classify, load_classifier
    from dreamlr.world.quality import clip_retrieval, composition, subject_nearest_neighbour

    out, _ = toy_world
    monkeypatch.setenv(ENV, str(out / "world"))
    retrieval = clip_retrieval(load_clip("world"), count=8)
    assert 0 <= retrieval["class_retrieval"] <= 1 and retrieval["images"] == 8
    nn = subject_nearest_neighbour(load_dino("world"), distractors_per_class=1, views=2)
    assert nn["queries"] == len(SUBJECTS) * IMAGES_PER_SUBJECT and 0 <= nn["subject_nn"] <= 1
    classifier = load_classifier(out / "world" / "classifier")
    found = classify(classifier, [render(Scene(Instance("cat", "pink")))])
    assert set(found) == set(HEADS) and found["cls"][0] in CLASSES
    pipe = load_pipeline("world")
    pipe.set_progress_bar_config(disable=True)
    result = composition(pipe, classifier, per_pair=1, steps=2)
    assert result["images"] == len(HELDOUT_PAIRS) and 0 <= result["class"] <= 1


def test_classifier_data_covers_the_heldout_pairs():
    from dreamlr.world.data import build_data

    pairs = {(s.instance.cls, s.context) for s in build_data(0, 400, 2, progress=False, heldout=True).scenes}
    assert pairs & HELDOUT_PAIRS
    plain = {(s.instance.cls, s.context) for s in build_data(0, 400, 2, progress=False).scenes}
    assert not plain & HELDOUT_PAIRS


def test_a_world_training_stage_resumes_from_its_checkpoint(tmp_path):
    """A build stage stopped after its first checkpoint continues (the checkpoint must load with
    weights_only, so no numpy scalars in it) to the same weights as an unbroken run."""
    from dreamlr.world.loop import run_loop, warmup_cosine

    def fit(folder, steps):
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)

        def step(_, rng, gen):
            x = torch.randn(8, 3, generator=gen)
            loss = model(x).square().mean()
            loss.backward()
            return {"loss": loss.item()}

        run_loop("t", {"m": model}, optimizer, step, steps, folder, seed=0, checkpoint_every=2, progress=False,
                 lr_at=warmup_cosine(1e-2, 6, 1))
        return model

    whole = fit(tmp_path / "whole", 6)
    fit(tmp_path / "split", 2)
    resumed = fit(tmp_path / "split", 6)
    assert torch.equal(whole.weight, resumed.weight) and torch.equal(whole.bias, resumed.bias)
