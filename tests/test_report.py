"""`dreamlr report` and the report files: the same table rebuilt from a finished sweep, run folders as rows,
a self-contained HTML page (every image an embedded PNG), and the page as headless Chromium renders it."""

from __future__ import annotations

import base64
import io
import os
import re
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
    args = ["compare", "--config", str(REPO / "configs" / "quickstart.yaml"), "--variants", "lora,singlora",
            "--subjects", str(DEMO), "--class-name", "mug", "--output-dir", str(root / "out"),
            "--prompts", str(root / "prompts.txt"), "--num-images", "1", "--steps", "2", "--clip", "tiny",
            "--dino", "tiny", "--set", "max_train_steps=3", "--set", "resolution=32",
            "--set", "num_validation_images=0", "--set", "learning_rate=0.01"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DREAMLR_CACHE", str(root / "cache"))
        assert main(args) == 0
    return root / "out"


def test_report_rebuilds_the_same_report_from_a_finished_sweep(sweep, tmp_path, capsys):
    assert main(["report", str(sweep), "--output-dir", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").read_text() == (sweep / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "| lora |" in printed and "| *base model (no adapter)* |" in printed
    assert sorted(p.name for p in (tmp_path / "again" / "figures").iterdir()) == sorted(
        p.name for p in (sweep / "figures").iterdir())


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
    assert len(sources) == len(list((sweep / "figures").glob("*.png"))) == 4
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])))
        assert image.format == "PNG" and min(image.size) > 50
        image.verify()
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"https?:|src=\"//|url\(|@import|<script|<link|<iframe", text), "the page must not reach out"


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          check=False, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"), reason="needs /usr/bin/chromium")
def test_html_renders_in_headless_chromium_with_table_and_every_image(sweep, tmp_path):
    assert CHROMIUM.exists(), "CI must have Debian's chromium package installed"
    url = (sweep / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1200,3000", url, profile=tmp_path / "profile")
    assert shot.is_file(), result.stderr[-2000:]
    image = Image.open(shot)
    assert image.size == (1200, 3000)
    histogram = image.convert("L").histogram()
    assert sum(1 for count in histogram if count) > 50  # text, plots and images, not a blank page
    assert sum(histogram[:128]) > 0.005 * image.width * image.height  # text and lines
    saturation = image.convert("HSV").getchannel("S").histogram()
    assert sum(saturation[128:]) > 0.02 * image.width * image.height  # the photos and plots were drawn

    dom = chromium("--dump-dom", url, profile=tmp_path / "profile").stdout
    assert "<table>" in dom and "<td>lora</td>" in dom and "base model (no adapter)" in dom
    assert len(embedded_images(dom)) == 4
