"""scripts/bench_world.py end to end on the built-in `tiny` model at toy size (until the world model exists):
the sweeps it runs and the table it prints."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, *extra: str, code: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DREAMLR_CACHE": str(out / "cache")}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_world.py"), "--out", str(out / "bench"),
                           "--model", "tiny", "--toy", "--variants", "lora,d2lora", "--settings", "attn-qk",
                           "--pairs", "lora16-d2lora8", "--seeds", "0", "--learning-rate", "0.02", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == code, done.stderr[-3000:]
    return done


def test_bench_world_runs_its_sweeps_and_prints_paired_differences(tmp_path):
    first = run(tmp_path)
    rows = [line.strip("|").split(" | ") for line in first.stdout.splitlines() if line.startswith("| attn-qk")]
    assert [(r[1].strip(), r[2], r[3]) for r in rows] == [("rank8", "*base model*", "–"), ("rank8", "lora", "8"),
                                                          ("rank8", "d2lora", "8"),
                                                          ("lora16-d2lora8", "lora", "16"),
                                                          ("lora16-d2lora8", "d2lora", "8")]
    assert all(len(r[5].split(" / ")) == 3 and float(r[5].split(" / ")[2]) > 0 for r in rows)  # mean scores
    assert rows[1][6] == "reference" and rows[2][6].count("[") == 1  # d2lora: a difference with its interval
    assert rows[3][4] == rows[4][4] == "43,008"  # the matched pair: LoRA r16 = D2-LoRA r8 in parameters
    bench = tmp_path / "bench"
    assert (bench / "bench_world.md").read_text().endswith(first.stdout.split("\n\n", 1)[1])
    for sweep in ("rank8", "lora16-d2lora8"):
        assert (bench / "attn-qk" / sweep / "report.html").is_file()
    assert (bench / "attn-qk" / "rank8" / "runs" / "lora" / "seed-0" / "demo_subject" / "adapter.safetensors").is_file()
    config = (bench / "attn-qk" / "rank8" / "runs" / "lora" / "seed-0" / "demo_subject" / "config.yaml").read_text()
    # the protocol's prior preservation, with the subject's class prompt, at the learning rate asked for
    assert "with_prior_preservation: true" in config and "class_prompt: a photo of mug" in config
    assert "learning_rate: 0.02" in config
    # running again reuses every run: each sweep is a `dreamlr compare` folder (tests/test_compare.py checks reuse)

    # --table-only trains nothing and leaves out (naming) the sweeps that are not there
    table = (bench / "bench_world.md").read_text()
    again = run(tmp_path, "--table-only", "--pairs", "lora16-d2lora8,singlora16-lora8")
    assert again.stdout == table == (bench / "bench_world.md").read_text()
    assert "no sweep attn-qk/singlora16-lora8" in again.stderr and not (bench / "attn-qk" / "singlora16-lora8").exists()
    empty = run(tmp_path / "none", "--table-only", code=2)
    assert "no finished sweep" in empty.stderr and not (tmp_path / "none" / "bench").exists()
