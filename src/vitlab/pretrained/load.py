"""Load pretrained weights into our own ViT: find or download the file, read it safely, convert, check.

    model, info = load_pretrained("vit_tiny_patch16_224.augreg_in21k_ft_in1k")           # registry name
    model, info = load_pretrained("vit_tiny", file="vit_tiny.safetensors", num_classes=10)  # local file, new head
    model, info = load_pretrained("my_vit.npz", img_size=384)                              # any file; resampled

Reading never executes code from a file: safetensors, ``.npz`` with ``allow_pickle=False``,
or ``torch.load(weights_only=True)``; a pickle that needs more is refused. TensorFlow
SavedModel directories and Keras files (``.keras``, ``.h5``) are read as plain arrays by
:mod:`vitlab.pretrained.tf` (checkpoint reader and h5py; their graphs and layers never run).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitlab.model import ViT, ViTConfig, resample_pos_embed
from vitlab.names import did_you_mean
from vitlab.pretrained.convert import convert, infer_config
from vitlab.pretrained.errors import WeightsError
from vitlab.pretrained.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    WEIGHT_ALIASES,
    WEIGHTS,
    Preprocessing,
    PretrainedWeights,
    class_names,
    get_weights,
)

WEIGHTS_DIR_ENV = "VITLAB_WEIGHTS_DIR"
WEIGHT_SUFFIXES = (".safetensors", ".npz", ".pth", ".pt", ".bin", ".ckpt", ".keras", ".weights.h5", ".h5", ".hdf5")


@dataclass
class PretrainedInfo:
    """What was loaded and what was changed on the way."""

    name: str
    file: str
    source_format: str
    config: ViTConfig
    preprocessing: Preprocessing
    classes: list[str]
    dropped: dict[str, str] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    """Human-readable notes: head replaced, position embedding resampled, ..."""
    meta: dict[str, Any] = field(default_factory=dict)

    def preprocessing_dict(self) -> dict[str, Any]:
        p = self.preprocessing
        return {"mean": list(p.mean), "std": list(p.std), "image_size": list(self.config.img_size),
                "in_chans": self.config.in_chans, "interpolation": p.interpolation, "crop_pct": p.crop_pct,
                "crop_mode": p.crop_mode,
                "pretrained": self.name}


def weights_cache_dir() -> Path:
    from vitlab.config import default_cache_dir

    return Path(default_cache_dir()) / "weights"


def is_weights_path(path: str | Path) -> bool:
    """A weights file, or a TensorFlow SavedModel directory."""
    path = Path(path)
    return path.is_file() or (path / "saved_model.pb").is_file()


def read_weights_file(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Tensors (or arrays) and metadata of a weights file or SavedModel directory, read without executing code.

    The metadata of a TensorFlow / Keras source names its layout (``source_format``)."""
    path = Path(path)
    if path.is_dir():
        from vitlab.pretrained import tf

        if not tf.is_saved_model(path):
            raise WeightsError(f"{path} is a directory but not a TensorFlow SavedModel (no saved_model.pb); "
                               "pass a weights file or a SavedModel directory")
        return tf.read_saved_model(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5", ".hdf5"):
        from vitlab.pretrained import tf

        return tf.read_keras(path)
    if path.name.lower().endswith((".tar.gz", ".tgz")):
        raise WeightsError(f"{path} is an archive; unpack it first (tar xzf {path.name}) and pass the SavedModel "
                           "directory (the one holding saved_model.pb)")
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except (SafetensorError, OSError) as exc:
            raise WeightsError(f"{path} is not a readable safetensors file ({exc}); it may be truncated or corrupt") from exc
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}, {}
        except ValueError as exc:
            raise WeightsError(f"{path} holds pickled objects, which are refused (they can run code); "
                               "a Google ViT .npz holds plain arrays only") from exc
        except Exception as exc:  # not a zip archive, truncated, ...
            raise WeightsError(f"{path} is not a readable .npz file ({exc})") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path} is a pickle that needs more than tensors to load, and vitlab never runs code from a file "
            f"(torch.load(weights_only=True) said: {str(exc).splitlines()[0]}). If you trust it, re-save its state "
            "dict with safetensors (safetensors.torch.save_file(state_dict, 'weights.safetensors')) and pass that"
        ) from exc
    except Exception as exc:
        raise WeightsError(f"{path} could not be read as a PyTorch checkpoint ({exc}); it may be truncated or corrupt") from exc
    for key in ("model", "state_dict", "model_state", "module"):  # common wrappers (DeiT's .pth: {"model": ...})
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}, {}


def find_weights_file(weights: PretrainedWeights, download: bool = True) -> Path:
    """A local copy of ``weights``: ``$VITLAB_WEIGHTS_DIR``, the cache, else a download into the cache."""
    candidates = []
    if os.environ.get(WEIGHTS_DIR_ENV):
        folder = Path(os.environ[WEIGHTS_DIR_ENV]).expanduser()
        candidates += [folder / weights.file_name] + [folder / f"{weights.name}{s}" for s in WEIGHT_SUFFIXES]
    cache = weights_cache_dir()
    candidates.append(cache / weights.file_name)
    for candidate in candidates:
        if is_weights_path(candidate):
            return candidate
    where = f"${WEIGHTS_DIR_ENV}={os.environ.get(WEIGHTS_DIR_ENV)!s} and {cache}"
    if not download:
        raise WeightsError(f"weights {weights.name} not found in {where}; allow downloading or pass the file")
    try:
        if weights.hf_repo:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(weights.hf_repo, weights.hf_file or "model.safetensors"))
        if weights.url:
            cache.mkdir(parents=True, exist_ok=True)
            target = cache / weights.file_name
            if weights.source_format == "tf_hub":  # a .tar.gz SavedModel: unpacked into a directory
                return _download_saved_model(weights.url, target)
            torch.hub.download_url_to_file(weights.url, str(target), progress=True)  # temp file + rename
            return target
    except WeightsError:
        raise
    except Exception as exc:
        source = f"huggingface.co/{weights.hf_repo}" if weights.hf_repo else weights.url
        raise WeightsError(
            f"could not download {weights.name} from {source} ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            f"Without internet: fetch the file on another machine and pass it (--finetune.pretrained_file FILE, or "
            f"load_pretrained(..., file=FILE)), or put it at {where} as {weights.file_name}"
        ) from exc
    raise WeightsError(f"registry entry {weights.name} names no URL or Hugging Face repo; pass the file")


def _download_saved_model(url: str, target: Path) -> Path:
    """Download a ``.tar.gz`` SavedModel and unpack it safely into ``target`` (temporary directory + rename)."""
    import tempfile

    from vitlab.pretrained.tf import extract_saved_model

    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        archive = Path(tmp) / "saved_model.tar.gz"
        torch.hub.download_url_to_file(url, str(archive), progress=True)
        return extract_saved_model(archive, target)


def registry_entry_for(source: str) -> PretrainedWeights | None:
    """The registry entry a name, an alias, or a file named ``<entry name>.<ext>`` refers to."""
    if source in WEIGHTS or source in WEIGHT_ALIASES:
        return get_weights(source)
    stem = Path(source).name
    for suffix in WEIGHT_SUFFIXES:
        stem = stem.removesuffix(suffix)
    return WEIGHTS.get(stem)  # a file named after a registry entry carries that entry's metadata


def _default_preprocessing(source_format: str, size: tuple[int, int]) -> Preprocessing:
    if source_format in ("npz", "hf", "tf_hub", "keras"):  # Google's releases and their ports: [-1, 1] pixels, squash
        return Preprocessing(crop_size=size, resize_size=min(size), interpolation="bilinear",
                             mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_mode="squash")
    return Preprocessing(crop_size=size, resize_size=round(min(size) / 0.875), interpolation="bicubic",
                         mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _resized(cfg: ViTConfig, preprocessing: Preprocessing, img_size) -> tuple[ViTConfig, Preprocessing]:
    """The architecture and preprocessing at another input size (same crop fraction)."""
    new = replace(cfg, img_size=img_size)
    scale = preprocessing.crop_pct
    return new, replace(preprocessing, crop_size=new.img_size, resize_size=round(min(new.img_size) / scale))


def pretrained_config(source: str | Path, *, file: str | Path | None = None, img_size: int | tuple[int, int] | None = None,
                      **config_overrides: Any) -> tuple[ViTConfig, Preprocessing]:
    """The architecture and preprocessing :func:`load_pretrained` gives for the same arguments (before a new head);
    a registry entry's are read from the registry, without its file."""
    entry = registry_entry_for(str(source))
    if entry is not None and file is None and not is_weights_path(source):
        cfg, preprocessing = replace(entry.config), entry.preprocessing
        if img_size is not None:
            cfg, preprocessing = _resized(cfg, preprocessing, img_size)
        return replace(cfg, **config_overrides), preprocessing
    _, info = load_pretrained(source, file=file, img_size=img_size, **config_overrides)
    return info.config, info.preprocessing


def load_pretrained(
    source: str | Path,
    *,
    file: str | Path | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    num_heads: int | None = None,
    download: bool = True,
    **config_overrides: Any,
) -> tuple[ViT, PretrainedInfo]:
    """Our ViT with pretrained weights, and a description of what was loaded.

    ``source`` is a registry name (``vitlab.pretrained.list_weights()``), a weights file
    (timm, torchvision, Hugging Face, Google ``.npz``, vit-keras ``.keras`` / ``.h5``, or a
    vitlab checkpoint) or a TensorFlow SavedModel directory (TF-Hub / Kaggle ViTs), with
    ``file`` overriding where a registry entry's file is read from. ``num_classes``
    replaces the head with a zero-initialised one when it differs; ``img_size``
    resamples the position embedding (bicubic) to the new patch grid. Other keyword
    arguments override the architecture's training-time settings (``drop_path_rate`` ...).
    """
    source = str(source)
    entry = registry_entry_for(source)
    if file is not None:
        path = Path(file)
    elif is_weights_path(source):
        path = Path(source)
    elif entry is not None:
        path = find_weights_file(entry, download=download)
    else:
        hint = did_you_mean(source, [*WEIGHTS, *WEIGHT_ALIASES])
        raise WeightsError(f"{source!r} is neither a registry name nor an existing file or SavedModel directory; {hint}"
                           f"known names: {sorted(WEIGHTS)} "
                           f"(short: {sorted(WEIGHT_ALIASES)}; `vitlab weights` lists them)")

    tensors, metadata = read_weights_file(path)
    vitlab_info = None
    if "vitlab" in metadata:  # one of our own checkpoints
        vitlab_info = json.loads(metadata["vitlab"])
        converted = convert(tensors, "vitlab")
    else:  # TensorFlow / Keras readers name their layout; others are detected from the key names
        try:
            converted = convert(tensors, metadata.get("source_format"))
        except ValueError as exc:
            raise WeightsError(f"{path}: {exc.args[0]}") from exc
        if converted.num_heads is None and metadata.get("num_heads"):  # a Keras config's head count
            converted.num_heads = int(metadata["num_heads"])
    state = converted.state

    if vitlab_info is not None:
        cfg = ViTConfig(**vitlab_info["model"])
        prep = vitlab_info.get("preprocessing", {})
        preprocessing = Preprocessing(crop_size=tuple(cfg.img_size), resize_size=round(min(cfg.img_size) / prep.get("crop_pct", 1.0)),
                                      interpolation=prep.get("interpolation", "bicubic"), crop_mode=prep.get("crop_mode", "center"),
                                      mean=tuple(prep.get("mean", IMAGENET_MEAN)), std=tuple(prep.get("std", IMAGENET_STD)))
        classes, name, meta = list(vitlab_info.get("classes", [])), str(path), {"epoch": vitlab_info.get("epoch")}
    elif entry is not None:
        cfg = replace(entry.config)
        if converted.num_heads is not None and converted.num_heads != cfg.num_heads:
            raise WeightsError(f"{path} has {converted.num_heads} attention heads but {entry.name} expects {cfg.num_heads}")
        preprocessing, classes, name, meta = entry.preprocessing, entry.classes(), entry.name, dict(entry.meta)
    else:
        eps = 1e-12 if converted.source_format == "hf" else 1e-6  # Keras / TF-Hub ViTs: 1e-6 as the JAX release
        known = dict(num_heads=num_heads or converted.num_heads, norm_eps=eps)
        try:  # img_size may be the checkpoint's own size (the only way to describe a non-square grid)
            cfg = infer_config(state, **known, **({} if img_size is None else {"img_size": img_size}))
        except ValueError:
            if img_size is None:
                raise
            cfg = infer_config(state, **known)  # another size: resampled below
        preprocessing = _default_preprocessing(converted.source_format, cfg.img_size)
        classes, name, meta = class_names(None, cfg.num_classes), path.name, {}
        meta["note"] = "architecture inferred from the tensor shapes; preprocessing is a default, check it"

    changes: list[str] = []
    if cfg.class_token and "pos_embed" in state and state["pos_embed"].shape[1] == cfg.num_patches:
        # timm's no_embed_class: the table has no CLS position; a zero slot is exactly equivalent
        state["pos_embed"] = torch.cat([torch.zeros_like(state["pos_embed"][:, :1]), state["pos_embed"]], dim=1)
    # position table for another image size
    if img_size is not None:
        new, preprocessing = _resized(cfg, preprocessing, img_size)
        if new.grid_size != cfg.grid_size and "pos_embed" in state:
            prefix = 1 if cfg.class_token else 0
            state["pos_embed"] = resample_pos_embed(state["pos_embed"], new.grid_size, cfg.grid_size, prefix)
            changes.append(f"position embedding resampled (bicubic) from a {cfg.grid_size[0]}x{cfg.grid_size[1]} "
                           f"to a {new.grid_size[0]}x{new.grid_size[1]} patch grid")
        cfg = new
    cfg = replace(cfg, **config_overrides)

    model = ViT.without_init(cfg)  # every tensor is loaded below (strictly), so no random initialisation
    replace_head = num_classes is not None and num_classes != cfg.num_classes
    if replace_head:
        for key in ("head.weight", "head.bias"):
            if key in state:
                dropped_shape = tuple(state.pop(key).shape)
                converted.dropped[key] = f"replaced by a new zero-initialised head (checkpoint shape {dropped_shape})"
        old = cfg.num_classes
        model.reset_classifier(num_classes)
        cfg = model.cfg
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
        changes.append(f"head replaced: {old} -> {num_classes} classes (zero-initialised)")
        classes = class_names(None, num_classes)

    from vitlab.training.checkpoint import CheckpointError, load_state_dict_checked

    try:
        load_state_dict_checked(model, state, source=f"{path} ({converted.source_format} layout)")
    except CheckpointError as exc:
        raise WeightsError(str(exc)) from exc
    info = PretrainedInfo(name=name, file=str(path), source_format=converted.source_format, config=replace(model.cfg),
                          preprocessing=preprocessing, classes=classes, dropped=dict(converted.dropped),
                          changes=changes, meta=meta)
    return model.eval(), info
