"""vitlab: a Vision Transformer written from scratch, to train, fine-tune and inspect.

    import vitlab
    result = vitlab.train(epochs=1, train_subset=512)     # `vitlab train`'s defaults, from Python
    vitlab.predict(result, ["digit.png"])
"""

from vitlab._version import __version__
from vitlab.config import DataConfig, FinetuneConfig, RunConfig, TrainConfig
from vitlab.model import ViT, ViTConfig, count_flops
from vitlab.presets import MODEL_PRESETS, RUN_PRESETS, model_config, run_config
from vitlab.resolve import ConfigError, resolve_config

__all__ = [
    "ConfigError", "DataConfig", "FinetuneConfig", "MODEL_PRESETS", "RUN_PRESETS", "RunConfig", "TrainConfig", "ViT",
    "ViTConfig", "count_flops", "finetune", "model_config", "predict", "resolve_config", "run_config", "train",
    "__version__",
]

# Last: vitlab.predict is the function (the module vitlab/predict.py stays importable by its full name).
from vitlab.api import finetune, predict, train  # noqa: E402
