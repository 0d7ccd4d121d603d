"""`dreamlr report` and the report files: the same table rebuilt from a finished sweep, run folders as rows,
a self-contained HTML page (every image an embedded PNG), and the page as headless Chromium renders it."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from dreamlr.cli import main

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo_subject"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A finished two-variant sweep (lora, singlora) on the demo subject, on `tiny` with tiny encoders."""
    root = tmp_path_factory.mktemp("report")
    (root / "prompts.txt").write_text("a {token} {class} on the beach\na red {token} {class}\n")
    args = ["compare", "--config", str(REPO / "configs" / "tiny-demo.yaml"), "--variants", "lora,singlora",
            "--subjects", str(DEMO), "--class-name", "mug", "--output-dir", str(root / "out"),
            "--prompts", str(root / "prompts.txt"), "--num-images", "1", "--steps", "2", "--clip", "tiny",
            "--dino", "tiny", "--set", "max_train_steps=3", "--set", "resolution=32",
            "--set", "num_validation_images=0", "--set", "learning_rate=0.01"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DREAMLR_CACHE", str(root / "cache"))
        assert main(args) == 0
    return root / "out"


def test_report_rebuilds_the_same_report_from_a_finished_sweep(sweep, tmp_path, capsys):
    before = (sweep / "report.md").read_text()
    assert main(["report", str(sweep)]) == 0
    assert (sweep / "report.md").read_text() == before  # the bootstrap has a fixed seed
    assert main(["report", str(sweep), "--output-dir", str(tmp_path / "again")]) == 0
    again = (tmp_path / "again" / "report.md").read_text()
    assert again.split("## Training loss")[0] == before.split("## Training loss")[0]
    assert f"]({os.path.relpath(sweep, tmp_path / 'again')}/runs/lora/demo_subject/eval/images/" in again
    printed = capsys.readouterr().out
    assert "| lora |" in printed and "| *base model (no adapter)* |" in printed
    assert sorted(p.name for p in (tmp_path / "again" / "figures").iterdir()) == sorted(
        p.name for p in (sweep / "figures").iterdir())


def test_report_has_paired_differences_costs_settings_contents_and_every_image(sweep):
    report = (sweep / "report.md").read_text()
    for section in ("Summary", "Results", "Paired differences", "Training loss", "Scores vs cost (Pareto)",
                    "Images: demo_subject"):
        assert f"- [{section}](#" in report.split("## Summary")[0] and f"## {section}" in report
    assert "| run | rank | trainable params | DINO ↑ | CLIP-I ↑ | CLIP-T ↑ | final loss | s/step ↓ (IQR) | " \
           "adapter memory ↓ | adapter file ↓ | alpha | lr | targets |" in report
    assert "| lora | 4 | 21,504 | " in report and "| 336.0 KiB | 102.8 KiB | 4 | 0.01 | attn |" in report
    assert "Δ DINO vs lora" in report and "Δ CLIP-T vs base model" in report
    assert "beyond noise" in report.split("## Results")[0]
    assert "### Per prompt: demo_subject" in report and "### Every image: demo_subject" in report
    assert report.count("](runs/singlora/demo_subject/eval/images/") == 2  # both prompts' images
    assert 'image seed ' in report and "CLIP-T 0." in report  # each image's scores as its title


def test_costs_are_bold_only_beyond_their_noise(sweep, tmp_path):
    copy = tmp_path / "gpu"
    shutil.copytree(sweep, copy)
    for label, memory in (("lora", [300.0, 310.0]), ("singlora", [305.0, 320.0])):  # overlapping: no winner
        path = copy / "results" / f"{label}.json"
        record = json.loads(path.read_text())
        record["subjects"] = [{**record["subjects"][0], "step_memory_mb": mib} for mib in memory]
        path.write_text(json.dumps(record))
    assert main(["report", str(copy)]) == 0
    report = (copy / "report.md").read_text()
    assert "| GPU step MiB ↓ (range) |" in report and "| 305 (300–310) |" in report and "**30" not in report
    assert "| GPU step MiB" not in (sweep / "report.md").read_text()  # a CPU sweep has no such column
    record = json.loads((copy / "results" / "singlora.json").read_text())
    record["subjects"] = [{**record["subjects"][0], "step_memory_mb": mib} for mib in (311.0, 320.0)]
    (copy / "results" / "singlora.json").write_text(json.dumps(record))
    assert main(["report", str(copy)]) == 0
    assert "| **305 (300–310)** |" in (copy / "report.md").read_text()  # apart beyond their ranges


def test_validation_samples_show_across_steps(sweep, tmp_path):
    copy = tmp_path / "samples"
    shutil.copytree(sweep, copy)
    for step, colour in ((2, "red"), (3, "blue")):
        folder = copy / "runs" / "lora" / "demo_subject" / "samples" / f"step-{step}"
        folder.mkdir(parents=True)
        Image.new("RGB", (32, 32), colour).save(folder / "0.png")
    assert main(["report", str(copy)]) == 0
    report = (copy / "report.md").read_text()
    assert "### Validation samples across training: demo_subject" in report
    assert '- lora: ![step 2](runs/lora/demo_subject/samples/step-2/0.png "step 2") ' \
           '![step 3](runs/lora/demo_subject/samples/step-3/0.png "step 3")' in report
    assert 'title="step 3"' in (copy / "report.html").read_text()


def test_sample_prompt_images_show_per_prompt_across_steps(sweep, tmp_path):
    copy = tmp_path / "sample-prompts"
    shutil.copytree(sweep, copy)
    samples = copy / "runs" / "lora" / "demo_subject" / "samples"
    for step in (2, 4):
        (samples / f"step-{step}").mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (32, 32), "red").save(samples / f"step-{step}" / f"prompt-{k:02d}.png")
    prompts = [{"text": text, "width": 32, "height": 32, "seed": 0, "steps": 2, "scale": 7.5, "negative": ""}
               for text in ("a photo of sks mug", "sks mug in the snow")]
    (samples / "prompts.json").write_text(json.dumps(prompts))
    assert main(["report", str(copy)]) == 0
    report = (copy / "report.md").read_text()
    assert "### Sample prompts across training: demo_subject" in report
    assert '- lora: sks mug in the snow: ![step 2](runs/lora/demo_subject/samples/step-2/prompt-01.png "step 2") ' \
           '![step 4](runs/lora/demo_subject/samples/step-4/prompt-01.png "step 4")' in report
    assert "Validation samples across training" not in report  # prompt-KK.png are not validation images


def test_a_bad_reference_exits_2_with_one_line(sweep, tmp_path, capsys):
    assert main(["report", str(sweep), "--reference", "dora", "--output-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--reference 'dora' is not a row of" in err and "(lora, singlora)" in err
    assert not (tmp_path / "r").exists()
    assert main(["report", str(sweep), "--reference", "singlora", "--output-dir", str(tmp_path / "s")]) == 0
    assert "Δ DINO vs singlora" in (tmp_path / "s" / "report.md").read_text()


def test_several_sweeps_rank_within_each_and_prefix_every_setup_line(sweep, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(sweep, other)
    assert main(["report", str(sweep), str(other), "--output-dir", str(tmp_path / "both")]) == 0
    report = (tmp_path / "both" / "report.md").read_text()
    setup = [part for part in report.split("## Summary")[0].split("\n\n")[3:] if part.strip()]  # after the contents
    prefixes = (f"`{sweep}`: ", f"`{other}`: ")
    assert len(setup) == 3 and all(line.startswith(prefixes) for line in setup[:2])
    assert setup[2].startswith("The sweeps share their settings; each sweep's rows are ranked")
    assert "| out/lora |" in report and "| other/lora |" in report
    summary = report.split("## Summary")[1].split("## Results")[0]
    assert f"`{sweep}`: DINO" in summary and f"`{other}`: DINO" in summary


def test_report_of_run_folders_lists_each_run(sweep, tmp_path):
    runs = [sweep / "runs" / variant / "demo_subject" for variant in ("lora", "singlora")]
    assert main(["report", *map(str, runs), "--output-dir", str(tmp_path / "runs")]) == 0
    report = (tmp_path / "runs" / "report.md").read_text()
    assert "| lora/demo_subject | 4 | 21,504 |" in report
    assert "| singlora/demo_subject | 4 | 11,264 |" in report
    assert (tmp_path / "runs" / "figures" / "loss.png").is_file()


def test_report_errors_are_one_line(sweep, tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "is neither a `dreamlr compare` folder" in capsys.readouterr().err
    assert main(["report", str(sweep), str(sweep / "runs" / "lora" / "demo_subject")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--output-dir" in err


def embedded_images(page: str) -> list[str]:
    return re.findall(r'<img [^>]*src="([^"]*)"', page)


def test_html_is_self_contained_and_every_image_is_an_embedded_png(sweep):
    page = (sweep / "report.html").read_text()
    sources = embedded_images(page)
    figures = len(list((sweep / "figures").glob("*.png")))
    assert figures == 4 and len(sources) == figures + 2 * 3  # + every image of both prompts: 2 variants, base
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.format == "PNG" and min(image.size) >= 32
        image.verify()
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "prefers-color-scheme: dark" in page and '<nav class="toc">' in page
    assert page.count('<label class="zoom"><input type="checkbox">') == len(sources)  # click to enlarge
    assert len(re.findall(r'<img alt="[^"]*" title="image seed \d+ · DINO 0\.\d{3}', page)) == 6
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"https?:|src=\"//|url\(|@import|<script|<link|<iframe", text), "the page must not reach out"


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          check=False, capture_output=True, text=True, timeout=120)


DARK = "--blink-settings=preferredColorScheme=0"  # Blink's enum: 0 dark, 1 light


@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"), reason="needs /usr/bin/chromium")
@pytest.mark.parametrize("width", [1400, 420])
@pytest.mark.parametrize("mode", ["light", "dark"])
def test_html_renders_in_headless_chromium_wide_and_narrow_light_and_dark(sweep, tmp_path, width, mode):
    """Screenshots (kept in the test's tmp folder): the page draws text, tables, plots and photos, on the
    background of the chosen colour scheme, at a desktop and at a phone width."""
    assert CHROMIUM.exists(), "CI must have Debian's chromium package installed"
    url = (sweep / "report.html").resolve().as_uri()
    shot = tmp_path / f"report-{width}-{mode}.png"
    flags = [DARK] if mode == "dark" else []
    height = 3000 if width > 1000 else 7000  # a narrow page is longer: reach its figures and photos too
    result = chromium(*flags, f"--screenshot={shot}", f"--window-size={width},{height}", url,
                      profile=tmp_path / "profile")
    assert shot.is_file(), result.stderr[-2000:]
    image = Image.open(shot).convert("RGB")
    assert image.size == (width, height)
    gray = image.convert("L")
    background = gray.getpixel((width - 25, 5))  # right of the title, left of the scroll bar
    assert (background > 240) if mode == "light" else (background < 40)
    histogram = gray.histogram()
    assert sum(1 for count in histogram if count) > 50  # text, plots and images, not a blank page
    far = sum(histogram[:128]) if mode == "light" else sum(histogram[128:])
    assert far > 0.005 * image.width * image.height  # text and lines against the background
    saturation = image.convert("HSV").getchannel("S").histogram()
    assert sum(saturation[128:]) > 0.005 * image.width * image.height  # the photos and plots were drawn

    dom = chromium(*flags, "--dump-dom", url, profile=tmp_path / "profile").stdout
    assert "<table>" in dom and "<td>lora</td>" in dom and "base model (no adapter)" in dom
    assert len(embedded_images(dom)) == 10 and 'name="viewport"' in dom


def test_setting_differences_name_what_two_sweeps_do_not_share():
    from dreamlr.report.build import setting_differences

    def setup(steps: int, subject: str) -> dict:
        return {"training": {"max_train_steps": steps, "seed": 0}, "generation": {"steps": 2},
                "encoders": {"clip": "tiny"}, "subjects": [{"name": subject, "prompts": ["a sks dog"]}]}
    assert setting_differences([setup(3, "dog"), setup(30, "cat")]) == ["max_train_steps", "subjects"]
    assert setting_differences([setup(3, "dog"), setup(3, "dog")]) == []
