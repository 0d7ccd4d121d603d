"""DreamBooth data: image decoding and normalisation, captions, errors, crops and flips."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dreamlr.diffusion.data import DreamBoothDataset, load_instance_images
from dreamlr.errors import UserError

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    image = Image.new("RGB", (width, height), BLUE)
    image.paste(RED, (0, 0, width // 2, height))
    return image


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "instance"
    d.mkdir()
    return d


def test_exif_orientation_is_applied(folder):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored image must be turned 90° clockwise for display
    halves(80, 40).save(folder / "rotated.jpg", exif=exif.tobytes(), quality=95)
    [(image, caption, path, _)] = load_instance_images(folder)
    assert image.size == (40, 80) and caption is None and path.name == "rotated.jpg"
    pixels = np.asarray(image).astype(int)
    assert abs(pixels[10, 20] - RED).max() < 40 and abs(pixels[70, 20] - BLUE).max() < 40


def test_every_mode_becomes_rgb(folder):
    transparent = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    transparent.save(folder / "rgba.png")
    Image.new("LA", (8, 8), (0, 0)).save(folder / "la.png")
    Image.new("L", (8, 8), 128).save(folder / "gray.png")
    Image.new("RGB", (8, 8), RED).convert("P").save(folder / "palette.png")
    Image.new("RGB", (8, 8), RED).convert("CMYK").save(folder / "cmyk.jpg")
    Image.new("RGB", (8, 8), RED).save(folder / "web.webp")
    Image.new("RGB", (8, 8), RED).save(folder / "bitmap.BMP")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(folder / "gray16.png")
    loaded = {p.name: np.asarray(im) for im, _, p, _ in load_instance_images(folder)}
    assert len(loaded) == 8
    assert all(Image.fromarray(a).mode == "RGB" for a in loaded.values())
    assert (loaded["rgba.png"] == 255).all() and (loaded["la.png"] == 255).all()  # transparency onto white
    assert (loaded["gray.png"] == 128).all() and (loaded["gray16.png"] == 255).all()
    assert (loaded["palette.png"] == RED).all()
    for name in ("cmyk.jpg", "web.webp", "bitmap.BMP"):
        assert abs(loaded[name].astype(int) - RED).max() < 40, name


def test_captions_and_ignored_files(folder):
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    Image.new("RGB", (8, 8)).save(folder / "b.png")
    Image.new("RGB", (8, 8)).save(folder / "c.png")
    (folder / "a.txt").write_text("  a photo of sks dog\n on the beach \n")
    (folder / "c.txt").write_text("   \n")
    (folder / "orphan.txt").write_text("no image")
    (folder / "notes.md").write_text("# notes")
    (folder / ".hidden.png").write_bytes(b"junk")
    (folder / "sub").mkdir()
    items = load_instance_images(folder)
    assert [(p.name, c) for _, c, p, _ in items] == [
        ("a.png", "a photo of sks dog on the beach"), ("b.png", None), ("c.png", None)]


@pytest.mark.parametrize(
    "content", [b"this is not a jpeg", b"\xff\xd8\xff\xe0" + b"\0" * 20], ids=["text", "header-only"]
)
def test_corrupt_image_names_the_file(folder, content):
    Image.new("RGB", (8, 8)).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(content)
    with pytest.raises(UserError, match=r"instance image '.*broken\.jpg': cannot be read as an image .*remove or"):
        load_instance_images(folder)


def test_truncated_image_names_the_file(folder):
    Image.new("RGB", (64, 64), RED).save(folder / "cut.png")
    data = (folder / "cut.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.png"):
        load_instance_images(folder)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match=r"instance folder '.*nowhere' does not exist"):
        load_instance_images(tmp_path / "nowhere")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(UserError, match=r"instance folder '.*' holds no images \(\.jpg"):
        load_instance_images(tmp_path)


def test_resize_keeps_aspect(folder):
    halves(300, 100).save(folder / "wide.png")
    [(image, *_)] = load_instance_images(folder, resolution=32)
    assert image.size == (96, 32)


@pytest.mark.parametrize("center_crop", [True, False])
def test_pixel_values(folder, center_crop):
    halves(300, 100).save(folder / "wide.png")
    Image.new("RGB", (50, 120), WHITE).save(folder / "tall.png")
    ds = DreamBoothDataset(folder, "a photo of sks dog", 32, center_crop=center_crop, random_flip=True)
    assert len(ds) == 2
    for item in ds:
        x = item["pixel_values"]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
        assert item["prompt"] == "a photo of sks dog"
    assert torch.all(ds[0]["pixel_values"] == 1)  # tall.png (sorted first) is white: +1


def test_center_crop_is_centred(folder):
    halves(300, 100).save(folder / "wide.png")
    x = DreamBoothDataset(folder, "p", 32)[0]["pixel_values"]
    assert x[0, :, :15].mean() > 0.9 and x[2, :, 17:].mean() > 0.9  # red left of centre, blue right


def test_random_crop_and_flip_follow_seed_and_epoch(folder):
    halves(300, 100).save(folder / "wide.png")

    def views(seed, epochs=range(12)):
        ds = DreamBoothDataset(folder, "p", 32, center_crop=False, random_flip=True, seed=seed)
        out = []
        for epoch in epochs:
            ds.set_epoch(epoch)
            out.append(ds[0]["pixel_values"])
        return torch.stack(out)

    a, b = views(0), views(0)
    assert torch.equal(a, b)
    assert not torch.equal(a, views(1))
    assert len({tuple(v.flatten().tolist()) for v in a}) > 3  # epochs differ
    flipped = [bool(v[0, :, 0].mean() < v[0, :, -1].mean()) for v in a]  # red ends up on the right
    assert any(flipped) and not all(flipped)


def test_prior_preservation(tmp_path):
    inst, cls = tmp_path / "inst", tmp_path / "cls"
    inst.mkdir(), cls.mkdir()
    for i in range(2):
        Image.new("RGB", (40, 40), RED).save(inst / f"{i}.png")
    for i in range(5):
        Image.new("RGB", (40, 40), BLUE).save(cls / f"{i}.png")
    (cls / "4.txt").write_text("a dog on grass")
    ds = DreamBoothDataset(inst, "a photo of sks dog", 32, class_dir=cls, class_prompt="a photo of a dog")
    assert len(ds) == 5
    assert [ds[i]["class_prompt"] for i in range(5)] == ["a photo of a dog"] * 4 + ["a dog on grass"]
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch["pixel_values"].shape == batch["class_pixel_values"].shape == (5, 3, 32, 32)
    assert (batch["pixel_values"][:, 0] == 1).all() and (batch["class_pixel_values"][:, 2] == 1).all()
    assert batch["prompt"] == ["a photo of sks dog"] * 5


def test_class_folder_errors(tmp_path):
    inst = tmp_path / "inst"
    inst.mkdir()
    Image.new("RGB", (40, 40)).save(inst / "0.png")
    with pytest.raises(UserError, match="class prompt"):
        DreamBoothDataset(inst, "p", 32, class_dir=tmp_path / "cls")
    with pytest.raises(UserError, match=r"class folder '.*cls' does not exist"):
        DreamBoothDataset(inst, "p", 32, class_dir=tmp_path / "cls", class_prompt="a dog")


def test_caption_policy_keeps_tokens_shuffles_the_rest_and_drops_at_its_rate():
    from dreamlr.diffusion.captions import CaptionPolicy, with_prefix

    caption = "sks dog, red collar, on grass, sunny, close-up"
    shuffle = CaptionPolicy(shuffle=True, keep_tokens=1)
    seen = {shuffle.apply(caption, torch.Generator().manual_seed(s)) for s in range(40)}
    assert len(seen) > 5
    for text in seen:
        tags = text.split(", ")
        assert tags[0] == "sks dog" and sorted(tags[1:]) == sorted(["red collar", "on grass", "sunny", "close-up"])
    again = shuffle.apply(caption, torch.Generator().manual_seed(3))
    assert again == shuffle.apply(caption, torch.Generator().manual_seed(3))  # from the generator only
    drop = CaptionPolicy(dropout_rate=0.25)
    gen = torch.Generator().manual_seed(0)
    dropped = [drop.apply(caption, gen) == "" for _ in range(4000)]
    assert abs(sum(dropped) / 4000 - 0.25) < 0.03
    off = CaptionPolicy()
    gen = torch.Generator().manual_seed(0)
    state = gen.get_state()
    assert not off.active and off.apply(caption, gen) == caption
    assert torch.equal(gen.get_state(), state)  # nothing drawn when every option is off
    assert with_prefix("a dog", "sks") == "sks a dog" and with_prefix(None, "sks") is None


def test_caption_prefix_goes_before_per_image_captions_only(tmp_path):
    folder = tmp_path / "inst"
    folder.mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (32, 32), "red").save(folder / f"{name}.png")
    (folder / "a.txt").write_text("a dog on grass")
    ds = DreamBoothDataset(folder, "a photo of sks dog", 32, caption_prefix="sks")
    assert [ds[i]["prompt"] for i in range(2)] == ["sks a dog on grass", "a photo of sks dog"]
