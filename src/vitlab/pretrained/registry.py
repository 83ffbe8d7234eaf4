"""Named pretrained weights, in the spirit of torchvision's weights enums.

Each :class:`PretrainedWeights` carries everything needed to use a checkpoint correctly:
the architecture (a :class:`~vitlab.model.ViTConfig`), where the file comes from (a URL or
a Hugging Face repo and file), the key layout it is stored in, the preprocessing it was
trained with, its class names and its metadata (accuracy, parameters, licence, paper).

    >>> w = get_weights("vit_tiny_patch16_224.augreg_in21k_ft_in1k")
    >>> w.preprocessing.resize_size, w.preprocessing.crop_size
    (248, 224)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal, Optional

from vitlab.model import ViTConfig

SourceFormat = Literal["timm", "torchvision", "hf", "npz", "tf_hub", "keras"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)  # Google's ViT releases scale pixels to [-1, 1]


@dataclass(frozen=True)
class Preprocessing:
    """How images were prepared for the weights: resize (the shorter side, or both sides: ``squash``), center crop,
    normalise."""

    crop_size: tuple[int, int] = (224, 224)
    resize_size: int = 248
    """Shorter side before the center crop (crop / crop_pct)."""
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: tuple[float, ...] = INCEPTION_MEAN
    std: tuple[float, ...] = INCEPTION_STD
    crop_mode: Literal["center", "squash"] = "center"
    """timm's ``crop_mode``: center keeps the aspect ratio; squash resizes to a square first (no aspect ratio kept)."""

    @property
    def crop_pct(self) -> float:
        """Fraction of the resized image the crop keeps (timm's ``crop_pct``)."""
        return min(self.crop_size) / self.resize_size

    @property
    def resize_shape(self) -> list[int]:
        """squash: the (height, width) every image is resized to before the crop."""
        return [round(side / self.crop_pct) for side in self.crop_size]

    def transform(self):
        """A torchvision transform: PIL image or uint8 tensor -> normalised float tensor (C, H, W)."""
        import torch
        from torchvision.transforms import v2 as T

        mode = T.InterpolationMode.BICUBIC if self.interpolation == "bicubic" else T.InterpolationMode.BILINEAR
        return T.Compose([
            T.ToImage(),
            T.Resize(self.resize_size if self.crop_mode == "center" else self.resize_shape, interpolation=mode,
                     antialias=True),
            T.CenterCrop(list(self.crop_size)),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(list(self.mean), list(self.std)),
        ])


@dataclass(frozen=True)
class PretrainedWeights:
    """One named checkpoint: architecture, source, preprocessing, classes and metadata."""

    name: str
    config: ViTConfig
    source_format: SourceFormat
    preprocessing: Preprocessing
    url: Optional[str] = None
    hf_repo: Optional[str] = None
    hf_file: Optional[str] = None
    categories: Optional[str] = "imagenet-1k"
    """Name of a class list (see :func:`class_names`), or None for unnamed classes."""
    meta: dict = field(default_factory=dict)

    @property
    def file_name(self) -> str:
        """The name the file is stored under in a weights folder or cache (a TF-Hub SavedModel: a directory)."""
        if self.source_format == "tf_hub":
            return self.name
        if self.hf_file:
            return f"{self.name}{_suffix(self.hf_file)}"
        if self.url:
            return f"{self.name}{_suffix(self.url)}"
        return f"{self.name}.safetensors"

    def classes(self) -> list[str]:
        return class_names(self.categories, self.config.num_classes)


def _suffix(name: str) -> str:
    for ext in (".safetensors", ".npz", ".pth", ".pt", ".bin"):
        if name.endswith(ext):
            return ext
    return ".bin"


def _vit(dim: int, depth: int, heads: int, classes: int = 1000, eps: float = 1e-6, img: int = 224) -> ViTConfig:
    return ViTConfig(img_size=img, patch_size=16, in_chans=3, num_classes=classes, embed_dim=dim, depth=depth,
                     num_heads=heads, mlp_ratio=4.0, norm_eps=eps)


_AUGREG = "How to train your ViT? Data, Augmentation, and Regularization in Vision Transformers (Steiner et al. 2021)"
_VIT = "An Image is Worth 16x16 Words (Dosovitskiy et al. 2021)"
_DEIT = "Training data-efficient image transformers & distillation through attention (Touvron et al. 2021)"
_AUGREG_PREP = Preprocessing(resize_size=248, interpolation="bicubic", mean=INCEPTION_MEAN, std=INCEPTION_STD)
_DEIT_PREP = Preprocessing(resize_size=248, interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD)  # timm: crop_pct 0.9

def _timm_hub(name: str, config: ViTConfig, prep: Preprocessing, top1: float, params: int, paper: str,
              pretrain: str, library: str = "timm") -> PretrainedWeights:
    """An entry whose file is ``model.safetensors`` in the Hugging Face repo ``timm/<name>``."""
    return PretrainedWeights(name, config, "timm", prep, hf_repo=f"timm/{name}", hf_file="model.safetensors",
                             meta={"top1": top1, "params": params, "license": "apache-2.0", "paper": paper,
                                   "pretrain": pretrain, "library": library})


_DEIT_LIB = "timm (facebookresearch/deit)"


def _tf_hub(name: str, variation: str, patch: int, top1: float, params: int, checkpoint: str) -> PretrainedWeights:
    """Sayak Paul's jax2tf export of an AugReg ViT (ImageNet-21k, fine-tuned on ImageNet-1k at 224) on Kaggle Models
    (formerly TF-Hub ``sayakpaul/<variation with _>/1``): a ``.tar.gz`` SavedModel, unpacked into the cache.
    Preprocessing as its notebooks: ``tf.image.resize`` to 224x224 (bilinear; squash), pixels / 127.5 - 1."""
    tfhub = variation.replace("-", "_")
    return PretrainedWeights(
        name,
        ViTConfig(img_size=224, patch_size=patch, num_classes=1000, embed_dim=768, depth=12, num_heads=12, norm_eps=1e-6),
        "tf_hub", Preprocessing(resize_size=224, interpolation="bilinear", mean=INCEPTION_MEAN, std=INCEPTION_STD,
                                crop_mode="squash"),
        url=f"https://www.kaggle.com/api/v1/models/spsayakpaul/vision-transformer/tensorFlow2/{variation}/1/download",
        meta={"top1": top1, "params": params, "license": "apache-2.0", "paper": _AUGREG, "pretrain": "ImageNet-21k",
              "library": f"TF-Hub / Kaggle Models spsayakpaul/vision-transformer/tensorFlow2/{variation} "
                         f"(sayakpaul/ViT-jax2tf; {checkpoint})",
              "tfhub_url": f"https://tfhub.dev/sayakpaul/{tfhub}/1?tf-hub-format=compressed",
              "note": "as the source, the whole image is resized to 224x224 (no crop, aspect ratio not kept). "
                      "Reading it needs TensorFlow (pip install 'vitlab[tf]')"})
_ENTRIES = [
    _timm_hub("vit_tiny_patch16_224.augreg_in21k_ft_in1k", _vit(192, 12, 3), _AUGREG_PREP, 75.45, 5_717_416, _AUGREG,
              "ImageNet-21k"),
    _timm_hub("vit_small_patch16_224.augreg_in21k_ft_in1k", _vit(384, 12, 6), _AUGREG_PREP, 81.40, 22_050_664, _AUGREG,
              "ImageNet-21k"),
    _timm_hub("vit_base_patch16_224.augreg_in21k_ft_in1k", _vit(768, 12, 12), _AUGREG_PREP, 84.53, 86_567_656, _AUGREG,
              "ImageNet-21k"),
    _timm_hub("deit_tiny_patch16_224.fb_in1k", _vit(192, 12, 3), _DEIT_PREP, 72.2, 5_717_416, _DEIT, "ImageNet-1k", _DEIT_LIB),
    _timm_hub("deit_small_patch16_224.fb_in1k", _vit(384, 12, 6), _DEIT_PREP, 79.9, 22_050_664, _DEIT, "ImageNet-1k", _DEIT_LIB),
    _timm_hub("deit_base_patch16_224.fb_in1k", _vit(768, 12, 12), _DEIT_PREP, 81.8, 86_567_656, _DEIT, "ImageNet-1k", _DEIT_LIB),
    PretrainedWeights(
        "vit_b_16.torchvision_in1k", _vit(768, 12, 12), "torchvision",
        Preprocessing(resize_size=256, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD),
        url="https://download.pytorch.org/models/vit_b_16-c867db91.pth",
        meta={"top1": 81.072, "params": 86_567_656, "license": "bsd-3-clause", "paper": _VIT,
              "pretrain": "ImageNet-1k", "library": "torchvision (ViT_B_16_Weights.IMAGENET1K_V1)"}),
    PretrainedWeights(
        "vit_base_patch16_224.google_in21k", _vit(768, 12, 12, classes=21843), "npz",
        Preprocessing(resize_size=224, interpolation="bilinear", crop_mode="squash"),
        url="https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz", categories=None,
        meta={"top1": None, "params": 102_595_923, "license": "apache-2.0", "paper": _VIT,
              "pretrain": "ImageNet-21k", "library": "google-research/vision_transformer (ViT-B_16.npz)",
              "note": "ImageNet-21k classifier (21,843 classes); its pre-logits layer is dropped on load, "
                      "as the paper does for fine-tuning"}),
    _tf_hub("vit_base_patch16_224.tfhub_sayakpaul_augreg_in21k_ft_in1k", "vit-b16-classification", 16, 84.018, 86_567_656,
            "B_16-i21k-300ep-lr_0.001-aug_medium2-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224"),
    _tf_hub("vit_base_patch8_224.tfhub_sayakpaul_augreg_in21k_ft_in1k", "vit-b8-classification", 8, 85.948, 86_576_872,
            "B_8-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224"),
    PretrainedWeights(
        "vit_base_patch16_224.hf_google", _vit(768, 12, 12, eps=1e-12), "hf",
        Preprocessing(resize_size=224, interpolation="bilinear", crop_mode="squash"),
        hf_repo="google/vit-base-patch16-224", hf_file="model.safetensors",
        meta={"top1": None, "params": 86_567_656, "license": "apache-2.0", "paper": _VIT,
              "pretrain": "ImageNet-21k", "library": "Hugging Face transformers (ViTForImageClassification)"}),
]

WEIGHTS: dict[str, PretrainedWeights] = {w.name: w for w in _ENTRIES}
WEIGHT_ALIASES = {
    "vit_tiny": "vit_tiny_patch16_224.augreg_in21k_ft_in1k",
    "vit_small": "vit_small_patch16_224.augreg_in21k_ft_in1k",
    "vit_base": "vit_base_patch16_224.augreg_in21k_ft_in1k",
    "deit_tiny": "deit_tiny_patch16_224.fb_in1k",
    "deit_small": "deit_small_patch16_224.fb_in1k",
    "deit_base": "deit_base_patch16_224.fb_in1k",
    "vit_b_16": "vit_b_16.torchvision_in1k",
    "google/vit-base-patch16-224": "vit_base_patch16_224.hf_google",
}


def list_weights() -> list[str]:
    return list(WEIGHTS)


def get_weights(name: str) -> PretrainedWeights:
    """The registry entry ``name`` (or one of its short aliases)."""
    key = WEIGHT_ALIASES.get(name, name)
    if key not in WEIGHTS:
        raise KeyError(f"unknown pretrained weights {name!r}; known: {sorted(WEIGHTS)} "
                       f"(aliases: {sorted(WEIGHT_ALIASES)}), or pass a weights file")
    return WEIGHTS[key]


@cache
def _imagenet_categories() -> tuple[str, ...]:
    """The 1,000 ImageNet class names, as torchvision's weights list them (a copy beside this file: reading it
    costs nothing, importing torchvision's model zoo for them took a second)."""
    return tuple((Path(__file__).with_name("imagenet_classes.txt")).read_text(encoding="utf-8").splitlines())


def class_names(categories: str | None, num_classes: int) -> list[str]:
    """Class names for a registry class list, or ``class_0 ... class_{n-1}``."""
    if categories == "imagenet-1k" and num_classes == 1000:
        return list(_imagenet_categories())
    return [f"class_{i}" for i in range(num_classes)]
