"""Training progress without a terminal: plain lines on stderr (step, loss, s/step, ETA) at a sensible interval."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dreamlr.training import metrics as training
from dreamlr.cli import main
from dreamlr.training import ProgressLog, progress

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo_subject"
LINE = re.compile(r"^train: step (\d+)/(\d+) \(\d+%\), loss [\d.]+, [\d.]+ s/step, ETA \d+m\d\ds$")


class Clock:
    def __init__(self, step_seconds: float) -> None:
        self.now, self.step_seconds = 1000.0, step_seconds

    def __call__(self) -> float:
        return self.now


def run_steps(bar, clock: Clock, steps: int) -> None:
    for step in range(steps):
        clock.now += clock.step_seconds
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.4f}")
    bar.close()


@pytest.mark.parametrize("step_seconds, total, logged", [
    (2.0, 100, [10 * k for k in range(1, 11)]),  # 10% of the steps = 20 s comes first: every 10%
    (1.0, 400, [30 * k for k in range(1, 14)] + [400]),  # 10% = 40 s: every 30 s, and the last step
    (0.5, 100, [20, 40, 60, 80, 100]),  # 10% = 5 s: never closer than 10 s
    (0.01, 100, []),  # a 1-second run: nothing
])
def test_progress_lines_every_ten_percent_or_thirty_seconds(step_seconds, total, logged, monkeypatch, capsys):
    clock = Clock(step_seconds)
    monkeypatch.setattr(ProgressLog, "clock", staticmethod(clock))
    monkeypatch.setattr(training.sys.stderr, "isatty", lambda: False, raising=False)
    bar = progress(total, 0, "train")
    assert isinstance(bar, ProgressLog)
    run_steps(bar, clock, total)
    lines = capsys.readouterr().err.splitlines()
    assert [int(LINE.match(line).group(1)) for line in lines] == logged, lines
    if total == 400:
        assert lines[0] == "train: step 30/400 (7%), loss 0.0333, 1.00 s/step, ETA 6m10s"


def test_a_resumed_run_counts_speed_and_eta_from_its_own_steps(monkeypatch, capsys):
    clock = Clock(3.0)
    monkeypatch.setattr(ProgressLog, "clock", staticmethod(clock))
    bar = ProgressLog(100, 50, "train")
    run_steps(bar, clock, 10)
    assert capsys.readouterr().err.splitlines()[0] == "train: step 60/100 (60%), loss 0.1000, 3.00 s/step, ETA 2m00s"


def test_train_without_a_terminal_logs_progress_lines(tmp_path, monkeypatch, capsys):
    clock = Clock(0.0)
    real_update = ProgressLog.update

    def slow_update(self, n=1):
        clock.now += 20.0  # every step "takes" 20 s
        real_update(self, n)

    monkeypatch.setattr(ProgressLog, "clock", staticmethod(clock))
    monkeypatch.setattr(ProgressLog, "update", slow_update)
    code = main(["train", "--model", "tiny", "--instance-dir", str(DEMO), "--instance-prompt", "a photo of sks mug",
                 "--output-dir", str(tmp_path / "run"), "--max-steps", "3", "--set", "resolution=32",
                 "--set", "num_validation_images=0"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: ")]
    assert code == 0 and [int(LINE.match(line).group(1)) for line in lines] == [1, 2, 3], lines
