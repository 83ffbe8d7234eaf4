"""Hugging Face ``datasets`` as a source (``hf:``): save_to_disk, parquet and imagefolder, offline."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from conftest import shared_dir
from vitlab.cli import main
from vitlab.config import DataConfig
from vitlab.data import DataNotFoundError, iterate_batches, load_data
from vitlab.data import hf as hf_module
from vitlab.model import ViT, ViTConfig

datasets = pytest.importorskip("datasets")

CLASSES = ["bars", "dots", "plain"]
TINY = ["--model.img_size", "16", "--model.patch_size", "4", "--model.in_chans", "3", "--model.embed_dim", "32",
        "--model.depth", "2", "--model.num_heads", "2", "--data.num_workers", "0", "--quiet"]


@pytest.fixture(autouse=True)
def hf_offline(tmp_path_factory, monkeypatch) -> Path:
    """Hugging Face's caches in a temporary folder, and offline: no test may reach the network or ~/.cache."""
    home = tmp_path_factory.getbasetemp() / "hf-home"
    for name, value in {"HF_HOME": home, "HF_DATASETS_CACHE": home / "datasets", "HF_DATASETS_OFFLINE": "1",
                        "HF_HUB_OFFLINE": "1"}.items():
        monkeypatch.setenv(name, str(value))
    # `datasets` reads these when it is imported: point the already-imported module there too
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "HF_MODULES_CACHE", home / "modules")
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", home / "datasets" / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", home / "datasets" / "downloads" / "extracted")
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # the second: older versions of `datasets`
        monkeypatch.setattr(datasets.config, flag, True, raising=False)
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return home


def make_dataset(n: int, size=(16, 16), mode: str = "RGB", seed: int = 0, **extra):
    """``n`` random images per class whose class shows (bars / dots / plain), with a ClassLabel."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        for _ in range(n):
            h, w = size if not callable(size) else size(len(images))
            pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
            if name == "bars":
                pixels[::4] = 255
            elif name == "dots":
                pixels[::3, ::3] = 255
            images.append(Image.fromarray(pixels).convert(mode))
            labels.append(label)
    features = {"img": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}
    columns = {"img": images, "label": labels}
    for name, (feature, values) in extra.items():
        features[name], columns[name] = feature, values(labels)
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def snapshot(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def hf_sources(tmp_path_factory) -> dict[str, Path]:
    """The same small data set as a save_to_disk folder (train + test) and as parquet files (train + validation)."""
    root = tmp_path_factory.mktemp("hf-sources")
    train, test = make_dataset(12, seed=0), make_dataset(4, seed=1)
    datasets.DatasetDict(train=train, test=test).save_to_disk(str(root / "saved"))
    (root / "parquet").mkdir()
    train.to_parquet(str(root / "parquet" / "train-00000-of-00001.parquet"))
    test.to_parquet(str(root / "parquet" / "validation-00000-of-00001.parquet"))
    return {"saved": root / "saved", "parquet": root / "parquet", "train_file": root / "parquet" / "train-00000-of-00001.parquet"}


# ----------------------------------------------------------------------------- through the CLI


def test_train_and_eval_from_a_save_to_disk_folder(hf_sources, tmp_path, capsys):
    before = snapshot(hf_sources["saved"])
    run = tmp_path / "run"
    argv = ["train", "--data.dataset", f"hf:{hf_sources['saved']}", *TINY, "--train.epochs", "2", "--train.batch_size", "8",
            "--run_dir", str(run)]
    assert main(argv) == 0
    assert "val acc" in capsys.readouterr().out
    info = json.loads((run / "best.json").read_text())
    assert info["classes"] == CLASSES
    assert "save_to_disk folder" in info["data_notes"]["source"] and "'test' (12)" in info["data_notes"]["source"]
    assert len(info["preprocessing"]["mean"]) == 3  # the training images' own statistics
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["dataset"] == f"hf:{hf_sources['saved']}"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2

    assert main(["eval", str(run), "--out", str(tmp_path / "eval")]) == 0  # re-reads the saved data config
    assert "plain" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["images"] == 12
    assert snapshot(hf_sources["saved"]) == before, "the data set folder must never be written into"


def test_finetune_from_parquet_files(hf_sources, tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "tiny.safetensors"
    model = ViT(ViTConfig(img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2, num_classes=1000))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    before = snapshot(hf_sources["parquet"])
    run = tmp_path / "ft"
    assert main(["finetune", "--pretrained", str(weights), "--dataset", "hf:parquet", "--data.path", str(hf_sources["parquet"]),
                 "--mode", "linear", "--train.epochs", "1", "--train.batch_size", "16", "--data.num_workers", "0",
                 "--run_dir", str(run), "--quiet"]) == 0
    info = json.loads((run / "best.json").read_text())
    assert info["classes"] == CLASSES and "validation split 'validation' (12)" in info["data_notes"]["source"]
    assert main(["eval", str(run)]) == 0
    assert "bars" in capsys.readouterr().out
    assert snapshot(hf_sources["parquet"]) == before


def test_bad_source_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["train", "--data.dataset", "hf:parquet", *TINY, "--run_dir", str(tmp_path / "r")]) == 2
    assert "--data.path" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the data layer


def test_parquet_and_save_to_disk_give_the_same_data(hf_sources):
    a = load_data(DataConfig(dataset=f"hf:{hf_sources['saved']}", num_workers=0), image_size=(16, 16))
    b = load_data(DataConfig(dataset="hf:parquet", path=str(hf_sources["parquet"]), num_workers=0), image_size=(16, 16))
    assert a.classes == b.classes == CLASSES and a.channels == 3 and a.image_size == (16, 16)
    assert a.train.images.shape == (36, 3, 16, 16) and a.train.images.dtype == torch.uint8
    assert torch.equal(a.train.images[:], b.train.images[:]) and torch.equal(a.val.labels, b.val.labels)
    assert a.mean == b.mean and all(0 < m < 1 for m in a.mean)


def test_one_file_without_validation_split_is_split_with_the_seed(hf_sources):
    cfg = DataConfig(dataset="hf:parquet", path=str(hf_sources["train_file"]), num_workers=0)
    a, b = (load_data(cfg, image_size=(16, 16), seed=3) for _ in range(2))
    assert len(a.train) == 32 and len(a.val) == 4  # 10% of 36 held out
    assert torch.equal(a.val.images[:], b.val.images[:])
    assert "no validation split" in a.notes["validation"] and "held out" in a.notes["validation"]
    c = load_data(DataConfig(dataset="hf:parquet", path=str(hf_sources["train_file"]), num_workers=0, val_fraction=0.25),
                  image_size=(16, 16), seed=3)
    assert len(c.val) == 9 and "held out" in c.notes["validation"]


def test_splits_and_columns_can_be_chosen(tmp_path):
    ds = make_dataset(3, coarse=(datasets.ClassLabel(names=["x", "y"]), lambda labels: [y % 2 for y in labels]))
    datasets.DatasetDict(dev=ds, holdout=ds.select(range(4)), extra=ds.select(range(2))).save_to_disk(str(tmp_path / "d"))
    cfg = DataConfig(dataset=f"hf:{tmp_path / 'd'}", num_workers=0, hf_train_split="dev", hf_val_split="holdout")
    data = load_data(cfg, image_size=(8, 8))
    assert data.classes == CLASSES and len(data.train) == 9 and len(data.val) == 4 and data.train.images.shape[-2:] == (8, 8)
    assert load_data(replace(cfg, label_column="coarse"), image_size=(8, 8)).classes == ["x", "y"]


def test_integer_labels_and_grayscale_images(tmp_path):
    ds = make_dataset(4, mode="L").cast_column("label", datasets.Value("int64")).rename_column("label", "target")
    ds.save_to_disk(str(tmp_path / "gray"))
    data = load_data(DataConfig(dataset=f"hf:{tmp_path / 'gray'}", num_workers=0))  # no size: the images' own
    assert data.classes == ["0", "1", "2"] and data.channels == 1 and data.image_size == (16, 16)
    assert len(data.mean) == 1 and "'target'" in data.notes["source"]


def test_mixed_sizes_need_a_size_and_are_then_resized(tmp_path):
    ds = make_dataset(3, size=lambda i: (16, 16) if i % 2 else (20, 24))
    ds.save_to_disk(str(tmp_path / "mixed"))
    cfg = DataConfig(dataset=f"hf:{tmp_path / 'mixed'}", num_workers=0, val_fraction=0.3)
    with pytest.raises(ValueError, match=r"not all one size .*16x16 \(4\).*image_size"):
        load_data(cfg)
    data = load_data(cfg, image_size=(12, 12))
    assert data.train.images.shape[1:] == (3, 12, 12)


def test_decoded_once_into_the_cache_and_never_half_written(hf_sources, tmp_path, monkeypatch):
    cfg = DataConfig(dataset=f"hf:{hf_sources['saved']}", num_workers=0, cache_dir=str(tmp_path / "cache"))

    def broken(self, indices):
        raise RuntimeError("decoder crashed")

    with monkeypatch.context() as patch:
        patch.setattr(hf_module.HFImages, "__getitems__", broken)
        with pytest.raises(RuntimeError, match="decoder crashed"):
            load_data(cfg, image_size=(16, 16))
    assert not list((tmp_path / "cache").rglob("*.safetensors*"))
    first = load_data(cfg, image_size=(16, 16))
    files = sorted(p.name for p in (tmp_path / "cache" / "tensors").iterdir())
    assert len(files) == 2 and all(f.startswith("hf-") and f.endswith(".safetensors") for f in files)

    def no_decoding(self, indices):
        raise AssertionError("decoded again although the cache holds the tensors")

    monkeypatch.setattr(hf_module.HFImages, "__getitems__", no_decoding)
    second = load_data(cfg, image_size=(16, 16))
    assert torch.equal(first.train.images[:], second.train.images[:]) and torch.equal(first.val.labels, second.val.labels)


def test_large_splits_stream(hf_sources):
    cfg = DataConfig(dataset=f"hf:{hf_sources['saved']}", num_workers=0, max_cache_gib=1e-9)
    data = load_data(cfg, image_size=(16, 16))
    assert data.train.images is None and data.train.stream is not None
    image, label = data.train.stream[5]
    cached = load_data(DataConfig(dataset=f"hf:{hf_sources['saved']}", num_workers=0), image_size=(16, 16))
    assert torch.equal(image, cached.train.images[5]) and label == int(cached.train.labels[5])


def test_hf_imagefolder_matches_the_image_folder_route(pattern_folder):
    ours = load_data(DataConfig(dataset="imagefolder", path=str(pattern_folder), num_workers=0), image_size=(16, 16))
    theirs = load_data(DataConfig(dataset="hf:imagefolder", path=str(pattern_folder), num_workers=0), image_size=(16, 16))
    assert theirs.classes == ours.classes
    for a, b in ((ours.train, theirs.train), (ours.val, theirs.val)):
        assert same_images(a, b)


def same_images(a, b) -> bool:
    """Equal as multisets of (label, pixels): the two routes may list the files in another order."""
    def key(split):
        return sorted((int(y), x.numpy().tobytes()) for x, y in zip(split.images, split.labels))
    return len(a) == len(b) and key(a) == key(b)


def test_imagenette_through_the_imagefolder_builder_matches_the_folder_route():
    root = shared_dir("data")
    if root is None or not (root / "imagenette-mini" / "val").is_dir():
        pytest.skip("shared data (imagenette-mini) not available; set VITLAB_DATA_DIR")
    folder = root / "imagenette-mini"
    before = snapshot(folder)
    kwargs = {"path": str(folder), "num_workers": 0, "crop_pct": 0.875}
    ours = load_data(DataConfig(dataset="imagefolder", **kwargs), image_size=(32, 32), splits=("val",))
    theirs = load_data(DataConfig(dataset="hf:imagefolder", **kwargs), image_size=(32, 32), splits=("val",))
    assert theirs.classes == ours.classes and len(theirs.classes) == 10 and theirs.classes[0] == "n01440764"
    assert theirs.channels == ours.channels == 3 and len(theirs.val) == 500
    assert same_images(ours.val, theirs.val)
    assert "train split 'train' (1000 images), validation split 'validation' (500)" in theirs.notes["source"]
    assert snapshot(folder) == before


# ----------------------------------------------------------------------------- bad input, clear errors


def test_datasets_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match=r'pip install "vitlab\[hf\]"'):
        load_data(DataConfig(dataset="hf:ylecun/mnist"), image_size=(28, 28))


def test_unreachable_name_offline():
    with pytest.raises(DataNotFoundError, match="Offline mode is on") as info:
        load_data(DataConfig(dataset="hf:nobody/no-such-dataset"), image_size=(28, 28))
    assert "save_to_disk" in str(info.value) and "hf:/path/to/it" in str(info.value)


def test_missing_paths_and_sources():
    with pytest.raises(ValueError, match="needs a source"):
        load_data(DataConfig(dataset="hf:"), image_size=(16, 16))
    with pytest.raises(DataNotFoundError, match="there is no folder"):
        load_data(DataConfig(dataset="hf:/no/such/folder"), image_size=(16, 16))
    with pytest.raises(DataNotFoundError, match="matches files"):
        load_data(DataConfig(dataset="hf:parquet", path="/no/such/*.parquet"), image_size=(16, 16))
    with pytest.raises(ValueError, match="drop --data.path"):
        load_data(DataConfig(dataset="hf:nobody/x", path="/tmp"), image_size=(16, 16))


def test_no_image_column(tmp_path):
    ds = make_dataset(2).remove_columns("img").add_column("caption", ["a picture"] * 6)
    ds.save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"no image column .*columns: label \(ClassLabel, 3 classes\), caption \(string\)"):
        load_data(DataConfig(dataset=f"hf:{tmp_path / 'd'}"), image_size=(16, 16))
    with pytest.raises(ValueError, match=r"column 'caption' holds string, not images .*cast_column"):
        load_data(DataConfig(dataset=f"hf:{tmp_path / 'd'}", image_column="caption"), image_size=(16, 16))


def test_no_label_column(tmp_path):
    ds = make_dataset(2)
    ds = ds.add_column("name", [CLASSES[y] for y in ds["label"]]).remove_columns("label")
    ds.save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"no label column .*img \(Image\), name \(string\).*class_encode_column"):
        load_data(DataConfig(dataset=f"hf:{tmp_path / 'd'}"), image_size=(16, 16))
    with pytest.raises(ValueError, match=r"column 'name' holds string, not class labels"):
        load_data(DataConfig(dataset=f"hf:{tmp_path / 'd'}", label_column="name"), image_size=(16, 16))
    with pytest.raises(ValueError, match=r"no column 'nope' \(--data.label_column\); columns: img"):
        load_data(DataConfig(dataset=f"hf:{tmp_path / 'd'}", label_column="nope"), image_size=(16, 16))


def test_unknown_split(hf_sources):
    with pytest.raises(ValueError, match=r"has no split 'holdout' \(--data.hf_val_split\); its splits: train \(36\), test \(12\)"):
        load_data(DataConfig(dataset=f"hf:{hf_sources['saved']}", hf_val_split="holdout"), image_size=(16, 16))
    with pytest.raises(ValueError, match=r"no split 'all' \(--data.hf_train_split\)"):
        load_data(DataConfig(dataset=f"hf:{hf_sources['saved']}", hf_train_split="all"), image_size=(16, 16))


def test_unlabelled_test_split(tmp_path):
    ds = make_dataset(2)
    unlabelled = ds.cast_column("label", datasets.Value("int64")).map(lambda e: {"label": -1})
    unlabelled = unlabelled.cast_column("label", ds.features["label"])
    datasets.DatasetDict(train=ds, test=unlabelled).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(ValueError, match=r"6 of the 6 examples of split 'test' have no label .*--data.val_fraction"):
        load_data(DataConfig(dataset=f"hf:{tmp_path / 'd'}", num_workers=0), image_size=(16, 16))
    data = load_data(DataConfig(dataset=f"hf:{tmp_path / 'd'}", num_workers=0, val_fraction=0.5), image_size=(16, 16))
    assert len(data.val) == 3  # the unlabelled split is not used


def test_an_hf_source_alone_decides_the_model_it_gets(tmp_path):
    """hf: sources go through the same data-aware defaults as image folders: the photos preset, the data's
    classes, channels and size, photo augmentation; integer labels count their classes."""
    from vitlab.flags import parse_train_flags

    make_dataset(3, size=(40, 40)).save_to_disk(str(tmp_path / "rgb"))
    args, cfg = parse_train_flags(["--data.dataset", f"hf:{tmp_path / 'rgb'}"])
    assert args.preset == "photos" and cfg.model.num_classes == 3 and cfg.model.in_chans == 3
    assert cfg.model.img_size == (32, 32) and cfg.model.patch_size == (4, 4) and cfg.data.augment == "crop_flip"
    gray = make_dataset(2, mode="L").cast_column("label", datasets.Value("int64"))
    gray.save_to_disk(str(tmp_path / "gray"))
    _, small = parse_train_flags(["--data.dataset", f"hf:{tmp_path / 'gray'}"])
    assert small.model.num_classes == 3 and small.model.in_chans == 1 and small.data.augment == "digits"
    assert load_data(small.data, image_size=small.model.img_size).num_classes == small.model.num_classes


def test_streaming_reads_the_training_split_every_epoch_and_stores_validation(hf_sources, tmp_path, capsys):
    """--data.hf_streaming: the same images, labels, classes and normalisation as the decoded source, the training
    split read as a seeded stream (every image once per epoch), the validation split decoded once."""
    cfg = DataConfig(dataset="hf:parquet", path=str(hf_sources["parquet"]), num_workers=0, hf_streaming=True,
                     cache_dir=str(tmp_path / "streamed"))
    streamed = load_data(cfg, image_size=(16, 16))
    decoded = load_data(replace(cfg, hf_streaming=False, cache_dir=str(tmp_path / "decoded")), image_size=(16, 16))
    assert streamed.train.shards is not None and streamed.train.images is None  # nothing decoded ahead
    assert streamed.classes == decoded.classes == CLASSES and len(streamed.train) == len(decoded.train) == 36
    assert streamed.mean == decoded.mean and streamed.std == decoded.std  # fewer than 2,000 images: all of them
    pairs = lambda split: sorted((int(y), x.numpy().tobytes()) for x, y in zip(split.images, split.labels))  # noqa: E731
    assert pairs(streamed.val) == pairs(decoded.val)
    epoch = list(iterate_batches(streamed.train, 6, shuffle=True, generator=torch.Generator().manual_seed(0)))
    seen = sorted((int(y), x.numpy().tobytes()) for images, labels in epoch for x, y in zip(images, labels))
    assert len(epoch) == 6 and seen == pairs(decoded.train)  # every training image once, with its label
    run = tmp_path / "run"
    assert main(["train", "--data.dataset", "hf:parquet", "--data.path", str(hf_sources["parquet"]), "--data.hf_streaming",
                 "true", *TINY, "--train.epochs", "1", "--train.batch_size", "8", "--run_dir", str(run),
                 "--data.cache_dir", str(tmp_path / "cli")]) == 0
    assert "streamed" in json.loads((run / "best.json").read_text())["data_notes"]["source"]
    with pytest.raises(ValueError, match="hf_val_split"):
        load_data(DataConfig(dataset="hf:parquet", path=str(hf_sources["train_file"]), hf_streaming=True,
                             cache_dir=str(tmp_path / "noval")), image_size=(16, 16))
