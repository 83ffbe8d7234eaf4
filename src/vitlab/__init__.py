"""vitlab: a Vision Transformer written from scratch, to train, fine-tune and inspect."""

__version__ = "0.1.0"

from vitlab.config import DataConfig, RunConfig, TrainConfig  # noqa: E402
from vitlab.model import ViT, ViTConfig, count_flops  # noqa: E402
from vitlab.presets import MODEL_PRESETS, RUN_PRESETS, model_config, run_config  # noqa: E402

__all__ = [
    "DataConfig", "MODEL_PRESETS", "RUN_PRESETS", "RunConfig", "TrainConfig", "ViT", "ViTConfig",
    "count_flops", "model_config", "run_config", "__version__",
]
