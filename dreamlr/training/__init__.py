"""What the image and text trainers share: the step loop (`loop`), optimizer groups and schedule (`schedule`),
checkpoints and resume (`checkpoints`), the run folder (`run_folder`), metrics and progress (`metrics`)."""

from dreamlr.training.checkpoints import (
    ADAPTER_FILE,
    EMA_FILE,
    STATE_FILE,
    CheckpointManager,
    TrainingDiverged,
    check_finite,
    check_weights_finite,
    non_finite_tensor,
    read_training_state,
)
from dreamlr.training.metrics import MetricsLog, ProgressLog, peak_memory_mb, progress
from dreamlr.training.run_folder import RUN_CONFIG, check_run_folder, start_run_folder
from dreamlr.training.schedule import LR_SCHEDULERS, adapter_groups, build_lr_scheduler, step_generator

__all__ = [
    "ADAPTER_FILE", "EMA_FILE", "LR_SCHEDULERS", "RUN_CONFIG", "STATE_FILE", "CheckpointManager", "MetricsLog",
    "ProgressLog", "TrainingDiverged", "adapter_groups", "build_lr_scheduler", "check_finite", "check_run_folder",
    "check_weights_finite", "non_finite_tensor", "peak_memory_mb", "progress", "read_training_state",
    "start_run_folder", "step_generator",
]
