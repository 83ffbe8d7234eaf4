"""Configuration of a training run: the model, the data, the optimisation and, when fine-tuning, the weights.

Frozen dataclasses: :func:`vitlab.resolve.resolve_config` builds one from a preset, YAML files,
flags and what the data and the weights decide, checks it, and from then on it is only read
(change a copy with ``dataclasses.replace``). ``RunConfig()`` is ``vitlab train``'s default, the
``mnist`` preset. The attribute docstrings are the flags' ``--help`` text.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

from vitlab.model import MODEL_PRESETS, ViTConfig

DATA_DIR_ENV = "VITLAB_DATA_DIR"
CACHE_DIR_ENV = "VITLAB_CACHE_DIR"


def default_data_dir() -> str:
    """``$VITLAB_DATA_DIR``, else ``~/.cache/vitlab/data`` (where downloads go)."""
    return os.environ.get(DATA_DIR_ENV) or str(Path.home() / ".cache" / "vitlab" / "data")


def default_cache_dir() -> str:
    """``$VITLAB_CACHE_DIR``, else ``~/.cache/vitlab/cache`` (decoded tensors, extracted archives)."""
    return os.environ.get(CACHE_DIR_ENV) or str(Path.home() / ".cache" / "vitlab" / "cache")


@dataclass(frozen=True)
class DataConfig:
    """Which images to train on and how to feed them."""

    dataset: str = "mnist"
    """mnist, fashion_mnist, cifar10, cifar100, imagefolder or webdataset (with ``path``), or hf:NAME (Hugging Face
    datasets, see README)."""
    path: Optional[str] = None
    """imagefolder: a folder with train/ and val/ sub-folders, or one of class folders; webdataset: a folder with
    train/*.tar and val/*.tar shards; hf:imagefolder/parquet: folder, file, glob."""
    data_dir: Optional[str] = None
    """Root holding the data sets (torchvision layout); default $VITLAB_DATA_DIR or ~/.cache/vitlab/data."""
    cache_dir: Optional[str] = None
    """Where decoded tensors and extracted files go; default $VITLAB_CACHE_DIR or ~/.cache/vitlab/cache."""
    download: bool = True
    """Download a missing data set (torchvision's official sources)."""
    augment: Literal["none", "digits", "flip", "crop_flip", "randaugment"] = "none"
    """Batched augmentation: digits (small random affine), flip, crop_flip (CIFAR), randaugment."""
    random_erasing: float = 0.0
    """Training: erase one random rectangle per image with this probability, filled with noise (timm's --reprob)."""
    val_fraction: float = 0.0
    """Hold out this fraction of the training set for validation (0: validate on the test split)."""
    train_subset: Optional[int] = None
    """Use only the first N (shuffled, seeded) training images: quick experiments and tests."""
    val_subset: Optional[int] = None
    """Use only the first N (shuffled, seeded) validation images."""
    skip_bad_images: bool = False
    """Image folders, shards and hf: sources: leave out images that cannot be decoded (truncated, empty, not an
    image), with a warning listing them, instead of stopping with an error that lists them."""
    num_workers: int = 2
    """Processes that decode image files (once, into the cache, or every epoch when streaming)."""
    max_cache_gib: float = 8.0
    """Image folders larger than this (decoded) are decoded every epoch instead of once into the store."""
    shuffle_buffer: int = 4096
    """webdataset: samples held in the training stream's shuffle buffer (more: closer to a random order, more memory)."""
    mean: Optional[tuple[float, ...]] = None
    """Normalisation mean per channel (default: the data set's own; fine-tuning: the weights')."""
    std: Optional[tuple[float, ...]] = None
    """Normalisation std per channel (default: the data set's own; fine-tuning: the weights')."""
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    """Resampling when images are resized to the model's img_size."""
    crop_pct: float = 1.0
    """Image folders and hf: sources: resize the shorter side to img_size / crop_pct, then center-crop (timm's crop_pct)."""
    crop_mode: Literal["center", "squash"] = "center"
    """center: keep the aspect ratio (shorter side, then the center crop); squash: resize height and width to
    img_size / crop_pct each (Hugging Face's and Google's ViT preprocessing), then center-crop."""
    hf_config: Optional[str] = None
    """hf: the data set's configuration (subset) name, for Hub data sets that have several."""
    hf_revision: Optional[str] = None
    """hf: the Hub branch, tag or commit to load (default: the main branch)."""
    hf_train_split: Optional[str] = None
    """hf: the split to train on (default: train, or the only split)."""
    hf_streaming: bool = False
    """hf: read the training split as a stream every epoch (``streaming=True``: nothing downloaded or decoded ahead,
    for data larger than the disk), as webdataset shards are; the validation split is still decoded once."""
    hf_val_split: Optional[str] = None
    """hf: the split to validate on (default: validation/valid/val/dev/eval, else test, else a seeded part of train)."""
    image_column: Optional[str] = None
    """hf: the column holding the images (default: the first Image feature)."""
    label_column: Optional[str] = None
    """hf: the column holding the labels (default: the first ClassLabel feature, else an integer column named label)."""

    def __post_init__(self) -> None:
        for key in ("mean", "std"):  # YAML and JSON give lists; a frozen config keeps tuples
            if getattr(self, key) is not None:
                object.__setattr__(self, key, tuple(getattr(self, key)))

    def resolved_data_dir(self) -> Path:
        return Path(self.data_dir or default_data_dir()).expanduser()

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir or default_cache_dir()).expanduser()


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: AdamW with decoupled weight decay, warm-up + cosine, label smoothing, clipping."""

    epochs: int = 10
    """Epochs to train (with ``time_budget_s``: planned after the first epoch instead)."""
    time_budget_s: Optional[float] = None
    """Train for this many seconds of wall time: the first epoch is timed and ``epochs`` becomes the number that
    fits (the cosine schedule follows it; the plan goes into config.yaml). None: train ``epochs`` epochs."""
    progressive_res: int = 0
    """Progressive resizing (fast.ai's and FFCV's ImageNet recipes): train the first ``progressive_epochs`` epochs on
    images downscaled to this many pixels a side, rising linearly in whole patches to the model's ``img_size``, then
    at full size (validation always at full size; needs ``--model.dynamic_img_size true``). 0: off (the other
    ``progressive_*`` settings are then unused). A time budget plans after the first full-size epoch."""
    progressive_epochs: int = 0
    """Epochs before full size is reached (with ``progressive_res``)."""
    progressive_lr_scale: float = 1.0
    """Learning-rate multiplier for the epochs at ``progressive_res`` pixels, rising geometrically with the image side
    to 1 at full size (0.5: half the rate at the start size, 0.71 halfway). Small images at the full rate can stall."""
    batch_size: int = 128
    """Images per optimisation step (over all processes under torchrun)."""
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    """adamw (decoupled weight decay), adam, or sgd (momentum 0.9, Nesterov)."""
    lr: float = 1e-3
    """Peak learning rate, reached after the warm-up."""
    min_lr: float = 1e-6
    """Learning rate at the end of the cosine or linear schedule."""
    weight_decay: float = 0.05
    """Decoupled weight decay; never applied to norms, biases, position embedding or CLS token."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam(W)'s moving-average coefficients."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning rate after the warm-up: cosine decay to min_lr, linear decay to min_lr, or constant."""
    warmup_epochs: float = 1.0
    """Linear warm-up from 0 to lr over this many epochs (fractions allowed)."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing in [0, 1)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0: off)."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the weights with this decay per step (0: off; e.g. 0.9995);
    when on, validation, the best/last checkpoints and the metrics use the averaged weights."""
    compile: bool = False
    """Run the training step through ``torch.compile`` (slower start, faster steps; needs a C++ compiler on CPU)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on CUDA; on the CPU bf16 only for a compiled step (--train.compile true) on a CPU with
    AMX-BF16 or AVX512-BF16 (measured 0.96-2.0x of fp32 there), fp32 otherwise (eager bf16 ViT steps measured
    0.25-0.55x of fp32 with AMX)."""
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps."""
    seed: int = 0
    """Seeds the initialisation, the data order, the augmentation and dropout."""
    eval_batch_size: int = 512
    """Images per batch when validating."""
    eval_every: int = 1
    """Validate after every this many epochs, and always after the last (the best checkpoint is chosen among the
    validated epochs). A time-limited run spends the time saved on training: CIFAR-10's 10,000 test images take
    ~15 s of a ~185-s epoch on 2 CPU cores."""
    threads: Optional[int] = None
    """CPU threads for PyTorch (default: PyTorch's own choice)."""
    tracker: Literal["none", "tensorboard", "mlflow", "wandb"] = "none"
    """Also log the configuration, per-step and per-epoch metrics, figures and the best checkpoint to TensorBoard
    (RUN_DIR/tensorboard), MLflow (``MLFLOW_TRACKING_URI``) or Weights & Biases (``WANDB_MODE``); see the guide."""
    tracker_project: str = "vitlab"
    """The MLflow experiment or W&B project the run goes into."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))


@dataclass(frozen=True)
class FinetuneConfig:
    """Start from pretrained weights: which ones, and what to train."""

    pretrained: str = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    """A registry name (`vitlab weights`) or a weights file (timm, torchvision, Hugging Face, .npz, vitlab)."""
    pretrained_file: Optional[str] = None
    """Read the registry entry's weights from this local file instead of $VITLAB_WEIGHTS_DIR / a download."""
    mode: Literal["linear", "staged", "full"] = "full"
    """linear: frozen backbone, head only; staged: head only for head_epochs, then everything; full: everything."""
    img_size: Optional[int] = None
    """Fine-tune at another resolution (the position embedding is resampled); default the weights' own."""
    head_epochs: int = 1
    """staged: epochs with the backbone frozen before it is unfrozen."""
    backbone_lr_scale: float = 0.1
    """staged: the backbone's learning rate relative to --train.lr once it is unfrozen."""
    layer_decay: float = 1.0
    """Layer-wise learning-rate decay: block i trains at lr * layer_decay^(depth - i) (1: off)."""
    drop_path_rate: float = 0.0
    """Stochastic depth while fine-tuning (the weights' architecture otherwise unchanged)."""
    cache_features: bool = True
    """linear without augmentation: run the frozen backbone once per image, then train the head on the features."""


@dataclass(frozen=True)
class RunConfig:
    """A whole training run: the model, the data and the schedule (and, when fine-tuning, the weights).

    The defaults are ``vitlab train``'s: the ``mnist`` preset (a 4-block ViT on 16 tokens of 7x7 pixels).
    """

    model: ViTConfig = field(default_factory=lambda: MODEL_PRESETS["vit_mnist"])
    data: DataConfig = field(default_factory=lambda: DataConfig(dataset="mnist", augment="digits"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, batch_size=128, lr=3e-3, warmup_epochs=0.5))
    finetune: Optional[FinetuneConfig] = None
    arch: str = "vit"
    """vit, or a convolutional baseline trained the same way: cnn, resnet18 (see :mod:`vitlab.baselines`)."""

    def to_dict(self) -> dict:
        d = {"arch": self.arch, "model": self.model.to_dict(), "data": _plain(asdict(self.data)), "train": _plain(asdict(self.train))}
        if self.finetune is not None:
            d["finetune"] = asdict(self.finetune)
        return d

    @property
    def uses_feature_cache(self) -> bool:
        """A linear probe without augmentation: the frozen backbone sees each image once, the steps train the head on
        its features (``--finetune.cache_features``)."""
        ft = self.finetune
        return ft is not None and ft.mode == "linear" and ft.cache_features and self.data.augment == "none"

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        finetune = FinetuneConfig(**d["finetune"]) if d.get("finetune") else None
        train = dict(d.get("train", {}))
        if "tensorboard" in train:  # written before --train.tracker replaced --train.tensorboard
            train.setdefault("tracker", "tensorboard" if train.pop("tensorboard") else "none")
        return cls(model=ViTConfig(**d["model"]), data=DataConfig(**d.get("data", {})), train=TrainConfig(**train),
                   finetune=finetune, arch=d.get("arch", "vit"))


def _plain(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}
