"""Sample-prompt files (issue 17 item 4): sd-scripts' per-line options, rendering at validation steps, the
contact sheet, and their place in `dreamlr report`."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from dreamlr.diffusion import train as train_module
from dreamlr.diffusion.sample_prompts import SamplePrompt, read_sample_prompts
from dreamlr.errors import UserError

from test_train import run_config


def test_lines_take_sd_scripts_options_and_the_run_defaults(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment\n\na photo of sks mug --w 48 --h 32 --d 7 --s 3 --l 4.5 --n blurry, dark\n"
                    "sks mug on the beach --seed 9 --steps 2 --scale 1\nplain prompt\n")
    first, second, third = read_sample_prompts(path, resolution=64, seed=0, steps=25)
    assert first == SamplePrompt("a photo of sks mug", 48, 32, 7, 3, 4.5, "blurry, dark")
    assert second == SamplePrompt("sks mug on the beach", 64, 64, 9, 2, 1.0)
    assert third == SamplePrompt("plain prompt", 64, 64, 0, 25, 7.5)


@pytest.mark.parametrize("line, message", [
    ("a mug --x 3", "line 1: unknown option --x"),
    ("a mug --w 30", "line 1: width must be a positive multiple of 8, got 30"),
    ("a mug --s many", "line 1: --s needs a number, got 'many'"),
    ("a mug --s 0", "line 1: steps must be at least 1"),
    (" --w 64", "line 1: no prompt before the options"),
    ("# only a comment", "holds no prompts"),
])
def test_bad_lines_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "prompts.txt"
    path.write_text(line + "\n")
    with pytest.raises(UserError, match=message):
        run_config(tmp_path, sample_prompts=str(path))
    assert not (tmp_path / "run").exists()


def test_training_renders_them_at_each_validation_step_with_a_contact_sheet(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a photo of sks mug --s 2\nsks mug on the beach --w 24 --h 16 --s 2 --d 3\n")
    run_dir = train_module.train(run_config(tmp_path, sample_prompts=str(path), max_train_steps=4,
                                            validation_steps=2, num_validation_images=0))
    samples = run_dir / "samples"
    for step in (2, 4):
        assert Image.open(samples / f"step-{step}" / "prompt-00.png").size == (32, 32)
        assert Image.open(samples / f"step-{step}" / "prompt-01.png").size == (24, 16)
    sheet = (samples / "index.html").read_text()
    assert sheet.count("<tr>") == 3 and 'src="step-4/prompt-01.png"' in sheet and "sks mug on the beach" in sheet
    assert [p["text"] for p in json.loads((samples / "prompts.json").read_text())] == \
        ["a photo of sks mug", "sks mug on the beach"]
