"""WebDataset tar shards: written from an image folder, streamed for training (timm's wds semantics: seeded shard
order, split over processes and workers, bounded shuffle, equal batch counts), validation decoded once."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from vitlab.cli import main
from vitlab.config import DataConfig
from vitlab.data import iterate_batches, load_data, num_batches
from vitlab.data.datasets import BadImageError, open_image
from vitlab.data.shards import read_samples, write_shards

SIZE = (16, 16)


@pytest.fixture(scope="module")
def shards(pattern_folder, tmp_path_factory) -> Path:
    """The pattern folder (3 classes, 120 train + 30 val) as PNG shards of 25 samples: 5 training shards, 2 val."""
    out = tmp_path_factory.mktemp("shards") / "shards"
    assert write_shards(pattern_folder, out, quality=None, per_shard=25, num_workers=0, progress=False) == \
        {"train": 120, "val": 30}
    return out


def shard_config(path: Path, tmp_path: Path, **extra) -> DataConfig:
    return DataConfig(dataset="webdataset", path=str(path), num_workers=0, cache_dir=str(tmp_path / "cache"), **extra)


def digest(image: torch.Tensor) -> bytes:
    return image.numpy().tobytes()


def test_written_shards_hold_every_image_exactly_with_its_label(shards, pattern_folder):
    assert sorted(p.name for p in (shards / "train").glob("*.tar")) == [f"train-{i:06d}.tar" for i in range(5)]
    assert (shards / "classes.txt").read_text().split() == ["circle", "cross", "stripes"]
    samples = [s for shard in sorted((shards / "train").glob("*.tar")) for s in read_samples(shard)]
    assert len(samples) == 120 and len({key for key, *_ in samples}) == 120
    written = {(Image.open(io.BytesIO(image)).tobytes(), label) for _, image, _, label in samples}
    classes = ["circle", "cross", "stripes"]
    originals = {(open_image(f, "RGB").tobytes(), classes.index(f.parent.name))
                 for f in (pattern_folder / "train").rglob("*.png")}
    assert written == originals  # PNG shards: the same pixels, each with its own label
    assert len({label for *_, label in samples[:25]}) == 3  # written in a shuffled order: a shard mixes the classes


def test_a_training_epoch_streams_every_sample_once_in_a_seeded_order(shards, tmp_path):
    data = load_data(shard_config(shards, tmp_path, shuffle_buffer=16), image_size=SIZE)
    assert data.classes == ["circle", "cross", "stripes"] and len(data.train) == 120 and len(data.val) == 30
    assert data.train.shards is not None and data.val.images is not None  # streamed; validation stored
    assert "images' own" in data.notes["normalization"] and len(data.mean) == 3

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(iterate_batches(data.train, 8, shuffle=True, generator=torch.Generator().manual_seed(seed)))

    first, again, other = epoch(0), epoch(0), epoch(1)
    assert len(first) == num_batches(data.train, 8) == 15 and all(len(y) == 8 for _, y in first)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))  # seeded: the same batches again
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other))  # another epoch, another order
    seen = [digest(x) for images, _ in first for x in images]
    assert len(set(seen)) == 120  # every sample once
    in_order = [digest(x) for images, _ in iterate_batches(data.train, 8) for x in images]
    assert sorted(seen) == sorted(in_order) and seen != in_order


def test_processes_and_workers_split_the_shards_and_take_equal_steps(shards, tmp_path):
    data = load_data(shard_config(shards, tmp_path), image_size=SIZE)
    per_rank = [list(iterate_batches(data.train, 8, shuffle=True, generator=torch.Generator().manual_seed(3),
                                     shard=(rank, 2), num_workers=2)) for rank in (0, 1)]
    assert [len(batches) for batches in per_rank] == [15, 15]  # the same steps in both processes (DDP)
    assert all(len(y) == 4 for batches in per_rank for _, y in batches)  # each a half of the global batch of 8
    firsts = [{digest(x) for images, _ in batches[:6] for x in images} for batches in per_rank]
    assert not firsts[0] & firsts[1]  # different shards for different processes


def test_validation_shards_are_decoded_once_with_their_labels(shards, tmp_path, pattern_folder):
    data = load_data(shard_config(shards, tmp_path), image_size=SIZE)
    folder = load_data(DataConfig(dataset="imagefolder", path=str(pattern_folder), num_workers=0,
                                  cache_dir=str(tmp_path / "folder")), image_size=SIZE)
    ours = sorted((int(y), digest(x)) for x, y in zip(data.val.images, data.val.labels))
    theirs = sorted((int(y), digest(x)) for x, y in zip(folder.val.images, folder.val.labels))
    assert ours == theirs


def test_a_bad_sample_is_named_or_skipped(shards, tmp_path):
    broken = tmp_path / "broken"
    for split in ("train", "val"):
        (broken / split).mkdir(parents=True)
        for shard in (shards / split).glob("*.tar"):
            (broken / split / shard.name).write_bytes(shard.read_bytes())
    (broken / "classes.txt").write_text((shards / "classes.txt").read_text())
    with tarfile.open(broken / "train" / "train-000005.tar", "w") as tar:
        for name, data in (("bad1.png", b"not an image"), ("bad1.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    strict = load_data(shard_config(broken, tmp_path, mean=[0.5] * 3, std=[0.5] * 3), image_size=SIZE)
    with pytest.raises(BadImageError, match=r"train-000005.tar: sample bad1 cannot be decoded.*skip_bad_images"):
        list(iterate_batches(strict.train, 121))  # in order: every sample, the bad one last
    lenient = load_data(shard_config(broken, tmp_path, skip_bad_images=True), image_size=SIZE)
    assert len(lenient.train) == 121  # counted, then left out as it is met
    labels = torch.cat([y for _, y in iterate_batches(lenient.train, 8)])
    assert len(labels) == 120 and labels.min() >= 0


def test_the_cli_writes_shards_and_trains_from_them(pattern_folder, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["shards", str(pattern_folder), str(out), "--per_shard", "40", "--max_size", "16",
                 "--num_workers", "0"]) == 0
    assert "120 training and 30 validation" in capsys.readouterr().out
    assert main(["shards", str(pattern_folder), str(out)]) == 2  # never over existing shards
    assert "already holds shards" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--preset", "mnist", "--data.dataset", "webdataset", "--data.path", str(out),
                 "--model.img_size", "16", "--model.patch_size", "4", "--model.embed_dim", "32", "--model.depth", "1",
                 "--model.num_heads", "2", "--data.num_workers", "0", "--train.epochs", "2", "--train.batch_size", "8",
                 "--data.cache_dir", str(tmp_path / "cache"), "--run_dir", str(run), "--quiet"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    config = (run / "config.yaml").read_text()
    assert len(records) == 2 and "webdataset" in config and "in_chans: 3" in config and "num_classes: 3" in config
    assert main(["train", "--data.dataset", "webdataset", "--data.path", str(tmp_path / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err
