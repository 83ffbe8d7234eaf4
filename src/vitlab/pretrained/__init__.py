"""Pretrained weights: the registry, converters from four layouts, and loading into our ViT."""

from vitlab.model import resample_pos_embed
from vitlab.pretrained.convert import Converted, convert, detect_format, infer_config
from vitlab.pretrained.load import (
    PretrainedInfo,
    WeightsError,
    find_weights_file,
    load_pretrained,
    read_weights_file,
)
from vitlab.pretrained.registry import (
    WEIGHTS,
    Preprocessing,
    PretrainedWeights,
    class_names,
    get_weights,
    list_weights,
)

__all__ = [
    "WEIGHTS", "Converted", "Preprocessing", "PretrainedInfo", "PretrainedWeights", "WeightsError", "class_names",
    "convert", "detect_format", "find_weights_file", "get_weights", "infer_config", "list_weights", "load_pretrained",
    "read_weights_file", "resample_pos_embed",
]
