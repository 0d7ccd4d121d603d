"""The benchmark scripts run end to end at toy sizes and print their tables (so they do not rot)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"


def run_script(name: str, *args: str) -> str:
    """stdout of `python scripts/<name> args`; fails the test with stderr if it exits non-zero."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def table_rows(stdout: str) -> list[list[str]]:
    """Cells of the markdown table rows printed (header and separator left out)."""
    rows = [line.strip("|").split("|") for line in stdout.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows[2:]]


def test_bench_adapters_reports_ratios_and_memory(tmp_path):
    out = run_script("bench_adapters.py", "--shapes", "1280x256", "--variants", "lora,dora", "--batch", "1",
                     "--iters", "1", "--warmup", "0", "--rank", "4", "--json", str(tmp_path / "adapters.json"))
    rows = table_rows(out)
    assert [row[1] for row in rows] == ["base", "peft-lora", "peft-dora", "lora", "dora"]
    assert float(rows[0][3]) == 1.0  # the base's ratio to itself
    for row in rows:
        assert float(row[2]) > 0 and float(row[6]) > 0  # milliseconds, peak MiB
    assert len(json.loads((tmp_path / "adapters.json").read_text())) == 5


def test_bench_loop_reports_the_loops_cost_over_a_bare_loop():
    rows = table_rows(run_script("bench_loop.py", "--steps", "2", "--rounds", "1"))
    assert [row[0].split(",")[0] for row in rows] == ["tiny SD UNet", "MLP 64-64-1"]
    assert all(float(row[1]) > 0 and float(row[2]) > 0 and float(row[3]) > 0 for row in rows)


def test_bench_scoring_reports_throughput():
    out = run_script("bench_scoring.py", "--images", "2", "--batch-size", "2", "--steps", "2", "--gen-images", "1",
                     "--repeats", "1")
    encoders, generation = out.split("| generation")
    rates = [float(row[4]) for row in table_rows(encoders)]
    assert len(rates) >= 2 and min(rates) > 0  # CLIP and DINO, images per second
    seconds = [float(row[2]) for row in table_rows("|" + generation)]
    assert seconds and min(seconds) > 0


@pytest.mark.skipif(not SST2.is_dir(), reason="shared SST-2 split not present")
def test_bench_text_table_and_resume(tmp_path):
    record = tmp_path / "text.json"
    args = ["--variants", "lora,d2lora,peft-lora,full", "--seeds", "0", "--epochs", "1", "--max-train-samples", "32",
            "--max-eval-samples", "16", "--batch-size", "8", "--json", str(record)]
    out = run_script("bench_text.py", *args)
    rows = {row[0]: row for row in table_rows(out)}
    assert list(rows) == ["lora", "d2lora", "peft-lora", "full"]
    assert rows["lora"][4] == "1.00×"
    trainable = {method: int(row[3].replace(",", "")) for method, row in rows.items()}
    assert trainable["lora"] == trainable["peft-lora"] < trainable["d2lora"] < trainable["full"]
    for row in rows.values():
        assert 0 <= float(row[2].split("±")[0]) <= 100
    first = json.loads(record.read_text())
    assert len(first["runs"]) == 4 and set(first["step_seconds"]) == set(rows)

    again = run_script("bench_text.py", *args)  # every run is recorded: only the timing is redone
    assert not [line for line in again.splitlines() if line.startswith("{")]
    assert json.loads(record.read_text())["runs"] == first["runs"]

    other = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_text.py"), *args, "--epochs", "2"],
                           cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert other.returncode != 0 and "other settings" in other.stderr


def test_bench_world_personalization_with_one_image_per_seed(tmp_path):
    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    config.update(max_train_steps=2, checkpointing_steps=2, num_validation_images=1, validation_steps=2,
                  validation_inference_steps=2, instance_data_dir=str(ROOT / config["instance_data_dir"]))
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(config))
    out = run_script("bench_world_personalization.py", "--out", str(tmp_path / "out"), "--config",
                     str(tmp_path / "short.yaml"), "--seeds", "0", "--num-images", "1", "--context-images", "1",
                     "--sampling-steps", "2", "--figure", str(tmp_path / "figure.png"))
    result = json.loads((tmp_path / "out" / "personalization.json").read_text())
    assert result["per_seed"]["seed"] == [0] and 0 <= result["summary"]["context"]["accuracy"] <= 1
    assert "dino" in out and (tmp_path / "figure.png").is_file()
