"""Aspect-ratio buckets and several concepts in one run (issue 17 items 1 and 3), on tiny models with images
of odd sizes: bucket math, what training sees, the upscale note, exact resume, and bad dataset keys."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from dreamlr.cli import main
from dreamlr.diffusion import train as train_module
from dreamlr.diffusion.buckets import Buckets, cover
from dreamlr.diffusion.data import DreamBoothDataset
from dreamlr.errors import UserError

from test_train import DEMO, run_config, train_interrupted


def _odd_images(folder, sizes=((100, 30), (30, 100), (64, 48), (20, 20))):
    folder.mkdir(parents=True, exist_ok=True)
    for k, (w, h) in enumerate(sizes):
        pixels = torch.linspace(0, 255, w * h * 3).reshape(h, w, 3).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"{k}.png")
    return folder


def test_buckets_keep_the_area_and_match_the_nearest_ratio():
    buckets = Buckets(512)
    for w, h in buckets.sizes:
        assert w % 64 == 0 and h % 64 == 0 and 256 <= min(w, h) and max(w, h) <= 1024 and w * h <= 512 * 512
    assert (512, 512) in buckets.sizes
    assert buckets.assign(1000, 300) == (832, 256) and buckets.assign(300, 1000) == (256, 832)
    for w, h in ((640, 480), (1920, 1080), (333, 999)):
        best = min(abs(math.log(bw / bh) - math.log(w / h)) for bw, bh in buckets.sizes)
        bw, bh = buckets.assign(w, h)
        assert abs(math.log(bw / bh) - math.log(w / h)) == best
    image = Image.new("RGB", (1000, 300))
    assert cover(image, (832, 256))[0].size == (832, 256)


def test_exif_rotated_images_go_to_the_bucket_of_their_upright_shape(tmp_path):
    folder = tmp_path / "exif"
    folder.mkdir()
    image = Image.new("RGB", (60, 20), "red")  # stored landscape, shown portrait (EXIF orientation 6)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(folder / "0.jpg", exif=exif)
    ds = DreamBoothDataset(folder, "p", 32, buckets=Buckets(32, step=8))
    assert ds[0]["pixel_values"].shape[1:] == (48, 16)  # (height, width): portrait


def test_a_bucketed_run_trains_on_several_sizes_and_says_when_it_upscales(tmp_path, monkeypatch, capsys):
    shapes = []
    real = train_module._denoising
    monkeypatch.setattr(train_module, "_denoising",
                        lambda config, parts, unet, embed, views, *a, **k: (shapes.append(tuple(views.latents.shape[2:])),
                                                                            real(config, parts, unet, embed, views,
                                                                                 *a, **k))[1])
    images = _odd_images(tmp_path / "odd")
    config = run_config(tmp_path, instance_data_dir=str(images), bucket=True, bucket_resolution_steps=8,
                        max_train_steps=12, num_validation_images=0)
    train_module.train(config)
    assert len(set(shapes)) >= 2  # several latent sizes trained
    assert "bucket" in (tmp_path / "run" / "README.md").read_text()
    err = capsys.readouterr().err
    assert "note: 1 instance image(s) are upscaled more than 1x to fit their bucket" in err  # the 20x20 one


SUBSETS = {"subsets": [{"instance_prompt": "a photo of sks mug", "repeats": 3},
                       {"instance_prompt": "a photo of zwx box", "bucket": True, "class_prompt": "a photo of box"}]}


def test_two_concepts_train_in_proportion_to_their_repeats(tmp_path, monkeypatch):
    seen = []
    real = train_module.PromptEncoder.__call__
    monkeypatch.setattr(train_module.PromptEncoder, "__call__",
                        lambda self, prompts: (seen.extend(prompts), real(self, prompts))[1])
    dataset = {"subsets": [{**SUBSETS["subsets"][0], "instance_data_dir": str(DEMO)},
                           {**SUBSETS["subsets"][1], "instance_data_dir": str(_odd_images(tmp_path / "box"))}]}
    path = tmp_path / "dataset.yaml"
    path.write_text(yaml.safe_dump(dataset))
    config = run_config(tmp_path, dataset=str(path), instance_data_dir="", instance_prompt="",
                        bucket_resolution_steps=8, max_train_steps=60, num_validation_images=0)
    run_dir = train_module.train(config)
    mugs, boxes = seen.count("a photo of sks mug"), seen.count("a photo of zwx box")
    assert mugs + boxes == 60
    # views: 6 mug images x 3 repeats vs 4 box images x 1 -> a mug view is drawn 18/22 of the time
    assert 0.65 < mugs / 60 < 0.95
    card = (run_dir / "README.md").read_text()
    assert "a photo of sks mug" in card and "'a photo of zwx box'" in card and "repeats 3" in card


def test_a_bucketed_two_concept_ema_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    box = _odd_images(tmp_path / "box")
    dataset = {"subsets": [{**SUBSETS["subsets"][0], "instance_data_dir": str(DEMO)},
                           {**SUBSETS["subsets"][1], "instance_data_dir": str(box)}]}
    settings = dict(dataset=dataset, instance_data_dir="", bucket_resolution_steps=8, ema_decay=0.9, max_train_steps=6,
                    checkpointing_steps=2, num_validation_images=0, with_prior_preservation=True,
                    class_prompt="a photo of mug", num_class_images=2)
    monkeypatch.setenv("DREAMLR_CACHE", str(tmp_path / "cache"))
    whole = train_module.train(run_config(tmp_path / "whole", **settings))
    train_interrupted(run_config(tmp_path / "split", **settings), 4, monkeypatch)  # dies in step 5
    split = train_module.train(run_config(tmp_path / "split", resume_from_checkpoint="latest", **settings))
    for name in ("adapter.safetensors", "adapter_ema.safetensors"):
        a, b = load_file(whole / name), load_file(split / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    # each concept got its own class images (one cache folder per class prompt)
    assert len(list((tmp_path / "cache" / "class_images").iterdir())) == 2


@pytest.mark.parametrize("dataset, message", [
    ({"subsets": []}, "must hold exactly one key, `subsets`"),
    ({"subsets": [{"instance_data_dir": "x", "repeat": 2}]}, "subset 1: unknown key 'repeat'"),
    ({"subsets": [{"instance_prompt": "a"}]}, "subset 1: instance_data_dir is not set"),
    ({"subsets": [{"instance_data_dir": str(DEMO), "repeats": 0}]}, "subset 1: repeats must be at least 1"),
    ({"subsets": [{"instance_data_dir": str(DEMO), "resolution": 30}]}, "resolution must be a positive multiple of 8"),
    ({"subsets": [{"instance_data_dir": str(DEMO), "repeats": "x"}]}, "'repeats' must be int"),
    ("/nowhere/dataset.yaml", "does not exist"),
])
def test_bad_dataset_keys_are_one_error(tmp_path, dataset, message):
    with pytest.raises(UserError, match=message):
        run_config(tmp_path, dataset=dataset)


def test_bad_bucket_keys_exit_2_from_the_cli(tmp_path, capsys):
    code = main(["train", "--instance-dir", str(DEMO), "--instance-prompt", "a sks mug", "--model", "tiny",
                 "--output-dir", str(tmp_path / "run"), "--set", "bucket=true", "--set", "min_bucket_side=100"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "min_bucket_side must be a multiple of bucket_resolution_steps" in err
    assert not (tmp_path / "run").exists()
