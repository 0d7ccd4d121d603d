"""scripts/bench_memory.py: the analytical byte counts on SDXL's layout at toy size, and the meta-device activation
count checked against a real CPU forward of the same UNet."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "scripts" / "bench_memory.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("method", ["lora", "dora", "peft"])
def test_adapter_gradient_and_adamw_bytes(method):
    off, on = bench.analyse("tiny", method, 8, "fp32", [False, True], 64, 1, ["adamw", "prodigy"])
    assert off["adapter_bytes"] == off["grad_bytes"] == 4 * off["trainable"] > 0
    assert off["optimizer_bytes"] == {"adamw": 2 * off["adapter_bytes"], "prodigy": 4 * off["adapter_bytes"]}
    assert off["total_bytes"] == off["frozen_bytes"] + 4 * off["adapter_bytes"] + off["activation_bytes"]
    # checkpointing keeps block inputs only, and adds one block's recompute back
    assert off["block_bytes"] == 0 < on["block_bytes"] and on["activation_bytes"] < off["activation_bytes"]


def test_optimizer_state_of_small_and_large_tensors():
    small, matrix, vector = torch.empty(8, 32), torch.empty(1024, 8), torch.empty(1024)
    assert bench.optimizer_state_bytes([small], "adamw8bit") == 8 * 256  # under 4096 elements: fp32 moments
    assert bench.optimizer_state_bytes([matrix], "adamw8bit") == 2 * 8192 + 8 * 32
    assert bench.optimizer_state_bytes([matrix, vector], "adafactor") == 4 * (1024 + 8) + 4 * 1024


@pytest.fixture
def one_thread():
    """Toy ops on a busy 2-core machine run 100x faster on one thread than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method,dtype", [("lora", "fp32"), ("dora", "bf16"), ("dual_lora", "bf16")])
def test_meta_count_matches_a_real_cpu_forward(method, dtype, one_thread):
    counts = {}
    for device in ("meta", "cpu"):
        unet, _ = bench.build_unet("tiny", method, 8, bench.DTYPES[dtype], device)
        inputs = bench.unet_inputs("tiny", 64, 1, bench.DTYPES[dtype], device)
        counts[device] = [bench.saved_activation_bytes(unet, inputs, bench.DTYPES[dtype], ckpt)
                          for ckpt in (False, True)]
    assert counts["meta"] == counts["cpu"]
    assert all(saved > 0 for saved, _ in counts["cpu"])


def test_main_prints_both_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench.diffusers_logging, "set_verbosity_error", lambda: None)  # leave other tests' logging be
    bench.main(["--models", "tiny", "--variants", "lora,loha,peft", "--dtype", "bf16", "--optimizers", "adamw,adafactor",
                "--analytic", "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 6 + 3  # (lora, loha, peft) x checkpointing off/on, then one optimizer row per method
    assert "| adamw | adafactor |" in out and "6 rows in" in out
    assert len(json.loads((tmp_path / "rows.json").read_text())) == 6
