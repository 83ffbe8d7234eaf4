"""Data sets as uint8 tensors, batched augmentation and batch iteration."""

from vitlab.data.augment import AUGMENTATIONS, Preprocess, augment_batch, random_affine, random_erasing
from vitlab.data.datasets import (
    DATASETS,
    NORMALIZATION,
    DataNotFoundError,
    FolderImages,
    ImageData,
    ImageSplit,
)
from vitlab.data.load import load_data
from vitlab.data.loader import iterate_batches, num_batches

__all__ = [
    "AUGMENTATIONS", "DATASETS", "NORMALIZATION", "DataNotFoundError", "FolderImages", "ImageData",
    "ImageSplit", "Preprocess", "augment_batch", "iterate_batches", "load_data", "num_batches", "random_affine", "random_erasing",
]
