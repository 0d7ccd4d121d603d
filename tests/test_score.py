"""`dreamlr score` on tiny encoders: exact values, caching, outputs, and one-line errors for bad input."""

import json
import shutil
from pathlib import Path

import huggingface_hub
import numpy as np
import open_clip
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torchvision.transforms import v2 as T

from dreamlr.cli import main
from dreamlr.evaluation import ManifestEntry, write_manifest
from dreamlr.evaluation.encoders import TINY_CLIP_CONFIG, TINY_SEED, load_clip, load_dino
from dreamlr.evaluation.score import score_folder

DOG = Path(__file__).resolve().parents[2] / "shared/data/dreambench/dog"
PROMPTS = ["a dog in the snow", "a dog on the beach"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("DREAMLR_CACHE", str(path))
    return path


def random_image(path: Path, seed: int, size=(80, 60)) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_generated(folder: Path, sources: list[Path], prompts=PROMPTS) -> Path:
    """A folder like `dreamlr generate` writes, from given image files (prompts assigned round-robin)."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, source in enumerate(sources):
        name = f"{i:03d}{source.suffix}"
        shutil.copyfile(source, folder / name)
        prompt = prompts[i % len(prompts)]
        entries.append(ManifestEntry(file=name, prompt=prompt.replace("dog", "sks dog"), prompt_clean=prompt,
                                     seed=i, model="tiny", image_index=i // len(prompts)))
    write_manifest(folder / "manifest.jsonl", entries)
    return folder


@pytest.fixture
def reference(tmp_path) -> Path:
    folder = tmp_path / "reference"
    folder.mkdir()
    for i in range(3):
        random_image(folder / f"ref{i}.png", seed=100 + i, size=(70 + 10 * i, 64))
    return folder


def score(generated, reference, output, **kwargs):
    return score_folder(generated, reference, output, clip="tiny", dino="tiny", **kwargs)


def test_identical_image_sets_score_one(tmp_path):
    image = random_image(tmp_path / "a.png", seed=1)
    reference = tmp_path / "reference"
    reference.mkdir()
    for name in ("x.png", "y.png"):
        shutil.copyfile(image, reference / name)
    generated = make_generated(tmp_path / "generated", [image] * 4)
    report = score(generated, reference, tmp_path / "out.json")
    for row in ("overall", "real_images"):
        for metric in ("clip_i", "dino"):
            assert report[row][metric]["mean"] == pytest.approx(1.0, abs=1e-6)
            assert report[row][metric]["std"] == pytest.approx(0.0, abs=1e-6)
    assert report["overall"]["clip_i"]["n"] == 4 and report["real_images"]["dino"]["n"] == 2


def test_clip_t_equals_open_clip_computed_directly(tmp_path, reference):
    sources = [random_image(tmp_path / f"g{i}.png", seed=i, size=(90, 50 + 7 * i)) for i in range(4)]
    if DOG.is_dir():  # real photos too, when the shared data is there
        sources += sorted(DOG.glob("*.jpg"))[:2]
    report = score(make_generated(tmp_path / "generated", sources), reference, tmp_path / "out.json")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = open_clip.CLIP(**TINY_CLIP_CONFIG).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    size = TINY_CLIP_CONFIG["vision_cfg"]["image_size"]
    preprocess = T.Compose([T.Resize(round(size * 256 / 224), interpolation=T.InterpolationMode.BICUBIC),
                            T.CenterCrop(size), T.ToImage(), T.ToDtype(torch.float32, scale=True),
                            T.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)])
    with torch.no_grad():
        for i, (source, row) in enumerate(zip(sources, report["per_image"])):
            image = model.encode_image(preprocess(Image.open(source).convert("RGB"))[None])
            text = model.encode_text(tokenizer([PROMPTS[i % 2]]))
            assert row["prompt_clean"] == PROMPTS[i % 2]
            assert row["clip_t"] == pytest.approx(torch.cosine_similarity(image, text).item(), abs=1e-5)


def test_report_layout_and_tables(tmp_path, reference):
    sources = [random_image(tmp_path / f"g{i}.png", seed=i) for i in range(4)]
    output = tmp_path / "scores" / "run.json"
    assert main(["score", "--generated", str(make_generated(tmp_path / "generated", sources)),
                 "--reference", str(reference), "--clip", "tiny", "--dino", "tiny", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    assert list(report)[:5] == ["overall", "real_images", "per_prompt", "per_image", "encoders"]
    for row in ("overall", "real_images"):
        assert set(report[row]) == {"clip_i", "clip_t", "dino"}
        assert all(set(v) == {"mean", "std", "n"} for v in report[row].values())
    assert report["real_images"]["clip_t"] == {"mean": None, "std": None, "n": 0}
    assert report["real_images"]["clip_i"]["n"] == 3
    assert [r["prompt"] for r in report["per_prompt"]] == ["a sks dog in the snow", "a sks dog on the beach"]
    assert all(r["clip_i"]["n"] == 2 for r in report["per_prompt"])
    assert len(report["per_image"]) == 4 and all(len(r["dino_pairs"]) == 3 for r in report["per_image"])
    per_image = np.array([r["dino"] for r in report["per_image"]])
    assert report["overall"]["dino"]["mean"] == pytest.approx(per_image.mean())
    assert report["overall"]["dino"]["mean"] == pytest.approx(np.mean([r["dino_pairs"] for r in report["per_image"]]))
    assert report["encoders"] == {"clip": "tiny", "dino": "tiny"}
    markdown = output.with_suffix(".md").read_text()
    assert "| generated |" in markdown and "| real images (leave-one-out) |" in markdown
    assert "| a sks dog on the beach |" in markdown
    csv_lines = output.with_suffix(".csv").read_text().splitlines()
    assert csv_lines[0].startswith("row,prompt,clip_i_mean") and len(csv_lines) == 1 + 2 + 2
    assert not list(output.parent.glob(".*"))  # no temporary files left


def test_reference_embeddings_are_cached_by_file_hash(tmp_path, reference, cache_dir):
    generated = make_generated(tmp_path / "generated", [random_image(tmp_path / "g.png", seed=5)])
    first = score(generated, reference, tmp_path / "a.json")
    cached = sorted(cache_dir.glob("embeddings/*/*.safetensors"))
    assert len(cached) == 2 * 3  # CLIP and DINO, three references
    renamed = tmp_path / "renamed"  # same bytes under other names: same cache entries
    shutil.copytree(reference, renamed)
    for path in renamed.iterdir():
        path.rename(path.with_name("other-" + path.name))
    assert score(generated, renamed, tmp_path / "b.json")["real_images"] == first["real_images"]
    assert sorted(cache_dir.glob("embeddings/*/*.safetensors")) == cached
    for path in cached:  # the cache is what is read ...
        save_file({"embedding": torch.ones(TINY_CLIP_CONFIG["embed_dim"])}, path)
    assert score(generated, reference, tmp_path / "c.json")["real_images"]["dino"]["mean"] == pytest.approx(1.0)
    for path in cached:  # ... and damaged entries are recomputed, not trusted
        path.write_bytes(b"garbage")
    assert score(generated, reference, tmp_path / "d.json")["overall"] == first["overall"]


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["score", *args])
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("dreamlr score: error: ")
    for fragment in fragments:
        assert fragment in err


def test_empty_folder_and_missing_manifest(tmp_path, capsys, reference):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out.json"
    common = ["--reference", str(reference), "--clip", "tiny", "--dino", "tiny", "--output", str(out)]
    assert_one_line_error(*run_cli(capsys, "--generated", str(empty), *common), "manifest.jsonl", str(empty))
    no_manifest = tmp_path / "images"
    no_manifest.mkdir()
    random_image(no_manifest / "a.png", seed=0)
    assert_one_line_error(*run_cli(capsys, "--generated", str(no_manifest), *common), "no manifest.jsonl")
    empty_reference = ["--reference", str(empty), "--clip", "tiny", "--dino", "tiny", "--output", str(out)]
    generated = make_generated(tmp_path / "generated", [random_image(tmp_path / "g.png", seed=0)])
    assert_one_line_error(*run_cli(capsys, "--generated", str(generated), *empty_reference), "holds no images")
    assert_one_line_error(*run_cli(capsys, "--generated", str(tmp_path / "nowhere"), *common), "does not exist")
    assert not out.exists()


def test_damaged_manifest_and_unreadable_images(tmp_path, capsys, reference):
    generated = make_generated(tmp_path / "generated", [random_image(tmp_path / f"g{i}.png", seed=i) for i in range(2)])
    out = tmp_path / "out.json"
    common = ["--clip", "tiny", "--dino", "tiny", "--output", str(out)]
    (generated / "001.png").write_bytes(b"not a png")
    assert_one_line_error(*run_cli(capsys, "--generated", str(generated), "--reference", str(reference), *common),
                          "001.png", "cannot be read as an image")
    (generated / "001.png").unlink()
    assert_one_line_error(*run_cli(capsys, "--generated", str(generated), "--reference", str(reference), *common),
                          "lists '001.png'")
    good = make_generated(tmp_path / "good", [random_image(tmp_path / "x.png", seed=9)])
    (reference / "ref1.png").write_bytes(b"\x89PNG truncated")
    assert_one_line_error(*run_cli(capsys, "--generated", str(good), "--reference", str(reference), *common),
                          "reference image", "ref1.png")
    with open(good / "manifest.jsonl", "a") as handle:
        handle.write("{not json\n")
    assert_one_line_error(*run_cli(capsys, "--generated", str(good), "--reference", str(reference), *common),
                          "line 2", "not valid JSON")
    assert not out.exists()


@pytest.mark.parametrize("flag, spec, fragment", [
    ("--clip", "nonsense", "CLIP encoder 'nonsense': unknown"),
    ("--clip", "ViT-B-32:no-such-tag", "neither a pretrained tag"),
    ("--dino", "vit_nonexistent_model", "DINO encoder 'vit_nonexistent_model': unknown"),
])
def test_unknown_encoder_spec(tmp_path, capsys, reference, flag, spec, fragment):
    generated = make_generated(tmp_path / "generated", [random_image(tmp_path / "g.png", seed=0)])
    args = {"--clip": "tiny", "--dino": "tiny", flag: spec}
    code, err = run_cli(capsys, "--generated", str(generated), "--reference", str(reference),
                        "--clip", args["--clip"], "--dino", args["--dino"], "--output", str(tmp_path / "o.json"))
    assert_one_line_error(code, err, fragment)


@pytest.mark.parametrize("flag, spec", [("--clip", "ViT-B-32:openai"), ("--dino", "vit_small_patch16_224.dino")])
def test_named_encoder_with_hub_offline_and_not_cached(tmp_path, capsys, monkeypatch, reference, flag, spec):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    generated = make_generated(tmp_path / "generated", [random_image(tmp_path / "g.png", seed=0)])
    args = {"--clip": "tiny", "--dino": "tiny", flag: spec}
    code, err = run_cli(capsys, "--generated", str(generated), "--reference", str(reference),
                        "--clip", args["--clip"], "--dino", args["--dino"], "--output", str(tmp_path / "o.json"))
    assert_one_line_error(code, err, spec, "not found locally, and the hub is offline")
    assert not (tmp_path / "o.json").exists()


def test_output_must_be_json(tmp_path, capsys, reference):
    generated = make_generated(tmp_path / "generated", [random_image(tmp_path / "g.png", seed=0)])
    code, err = run_cli(capsys, "--generated", str(generated), "--reference", str(reference), "--clip", "tiny",
                        "--dino", "tiny", "--output", str(tmp_path / "scores.txt"))
    assert_one_line_error(code, err, ".json")


def test_tiny_encoders_are_deterministic():
    image = [Image.new("RGB", (40, 40), (200, 30, 30))]
    a, b = load_clip("tiny"), load_clip("tiny")
    assert torch.equal(a.embed_images(image), b.embed_images(image))
    assert a.cache_key == b.cache_key


def test_local_clip_folder_and_dino_name_with_file(tmp_path):
    tiny = load_clip("tiny")
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CONFIG}))
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, folder / "open_clip_model.safetensors")
    image = [Image.new("RGB", (50, 40), (10, 200, 30))]
    local = load_clip(str(folder))
    assert torch.allclose(local.embed_images(image), tiny.embed_images(image))
    assert torch.allclose(local.embed_texts(["a dog"]), tiny.embed_texts(["a dog"]))
    assert local.cache_key != tiny.cache_key

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    save_file(model.state_dict(), tmp_path / "vit.safetensors")
    dino = load_dino(f"vit_tiny_patch16_224:{tmp_path / 'vit.safetensors'}")
    assert all(torch.equal(a, b) for a, b in zip(dino.model.state_dict().values(), model.state_dict().values()))
    key = dino.cache_key
    save_file({k: v + 1 for k, v in model.state_dict().items()}, tmp_path / "vit.safetensors")
    assert load_dino(f"vit_tiny_patch16_224:{tmp_path / 'vit.safetensors'}").cache_key != key  # new weights, new key


def test_openai_clip_weights_get_quick_gelu(monkeypatch):
    """open_clip 3 no longer switches ViT-B-32 to QuickGELU for `openai` weights; without it scores are wrong."""
    calls = []
    monkeypatch.setattr(open_clip, "download_pretrained", lambda cfg: "/cached/weights.bin")

    def create_model(name, **kwargs):
        calls.append((name, kwargs))
        model = open_clip.CLIP(**TINY_CLIP_CONFIG)
        open_clip.set_model_preprocess_cfg(model, {"size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3})
        return model

    monkeypatch.setattr(open_clip, "create_model", create_model)
    load_clip("ViT-B-32:openai")
    load_clip("ViT-B-32:laion2b_s34b_b79k")
    assert [(name, kw["pretrained"], kw["force_quick_gelu"]) for name, kw in calls] == [
        ("ViT-B-32", "openai", True), ("ViT-B-32", "laion2b_s34b_b79k", False)]
