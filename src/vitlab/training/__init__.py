"""Training, evaluation and checkpoints."""

from vitlab.training.checkpoint import CheckpointError, load_checkpoint, read_checkpoint_info, save_checkpoint
from vitlab.training.trainer import RunExistsError, TrainResult, evaluate, read_run_config, train

__all__ = [
    "CheckpointError", "RunExistsError", "TrainResult", "evaluate", "load_checkpoint", "read_checkpoint_info",
    "read_run_config", "save_checkpoint", "train",
]
