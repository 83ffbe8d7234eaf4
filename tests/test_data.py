"""Data sets, the tensor cache, batched augmentation and preprocessing."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import write_pattern_folder
from vitlab.config import DataConfig
from vitlab.data import (
    DataNotFoundError,
    Preprocess,
    augment_batch,
    iterate_batches,
    load_data,
    random_affine,
    random_erasing,
)
from vitlab.data import datasets as ds_module


def snapshot(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime) for p in sorted(root.rglob("*"))}


def test_mnist_from_read_only_root_is_extracted_into_the_cache(shared_data, private_cache):
    before = snapshot(shared_data / "MNIST")
    data = load_data(DataConfig(dataset="mnist", data_dir=str(shared_data), download=False))
    assert data.train.images.shape == (60000, 1, 28, 28) and data.train.images.dtype == torch.uint8
    assert data.val.images.shape == (10000, 1, 28, 28)
    assert data.train.labels.bincount().tolist()[:2] == [5923, 6742]  # MNIST's known class counts
    assert data.classes[0].startswith("0") and data.num_classes == 10
    assert data.mean == (0.1307,) and data.channels == 1 and data.image_size == (28, 28)
    assert snapshot(shared_data / "MNIST") == before, "the shared root must never be written into"
    assert (private_cache / "torchvision" / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


def test_fashion_mnist_loads(shared_data):
    if not (shared_data / "FashionMNIST" / "raw").is_dir():
        pytest.skip("no Fashion-MNIST in the shared data")
    data = load_data(DataConfig(dataset="fashion_mnist", data_dir=str(shared_data), download=False))
    assert data.train.images.shape == (60000, 1, 28, 28)
    assert data.classes[0] == "T-shirt/top" and data.mean == (0.2860,)


def test_missing_data_without_download_names_the_root(tmp_path):
    with pytest.raises(DataNotFoundError, match=str(tmp_path)) as info:
        load_data(DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False))
    assert "--data.data_dir" in str(info.value) and "VITLAB_DATA_DIR" in str(info.value)
    with pytest.raises(DataNotFoundError, match="cifar10"):
        load_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path), download=False))


def test_unknown_dataset_is_refused():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_data(DataConfig(dataset="svhn"))


def test_image_folder_with_train_and_val(pattern_folder, private_cache):
    data = load_data(DataConfig(dataset="imagefolder", path=str(pattern_folder)), image_size=(16, 16))
    assert data.classes == ["circle", "cross", "stripes"]
    assert data.train.images.shape == (120, 3, 16, 16) and len(data.val) == 30
    assert data.train.labels.tolist() == [0] * 40 + [1] * 40 + [2] * 40
    cached = list((private_cache / "tensors").glob("*.safetensors"))
    assert len(cached) >= 2


def test_image_folder_cache_is_reused(pattern_folder, monkeypatch):
    cfg = DataConfig(dataset="imagefolder", path=str(pattern_folder))
    first = load_data(cfg, image_size=(16, 16))

    def no_decoding(self, i):
        raise AssertionError("decoded again although the cache holds the tensors")

    monkeypatch.setattr(ds_module.FolderImages, "__getitem__", no_decoding)
    second = load_data(cfg, image_size=(16, 16))
    assert torch.equal(first.train.images[:], second.train.images[:])


def test_image_folder_resizes_to_the_model_size(pattern_folder):
    data = load_data(DataConfig(dataset="imagefolder", path=str(pattern_folder)), image_size=(8, 12))
    assert data.train.images.shape[1:] == (3, 8, 12)


def test_single_folder_needs_and_gets_a_seeded_split(tmp_path):
    root = write_pattern_folder(tmp_path / "flat", {"": 10})
    with pytest.raises(ValueError, match="val_fraction"):
        load_data(DataConfig(dataset="imagefolder", path=str(root)), image_size=(16, 16))
    cfg = DataConfig(dataset="imagefolder", path=str(root), val_fraction=0.2)
    a, b = (load_data(cfg, image_size=(16, 16), seed=3) for _ in range(2))
    assert len(a.train) == 24 and len(a.val) == 6
    assert torch.equal(a.val.labels, b.val.labels) and "held out" in a.notes["validation"]


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="--data.path"):
        load_data(DataConfig(dataset="imagefolder"), image_size=(16, 16))
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_data(DataConfig(dataset="imagefolder", path=str(tmp_path / "nope")), image_size=(16, 16))
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    with pytest.raises(DataNotFoundError, match="no images"):
        load_data(DataConfig(dataset="imagefolder", path=str(tmp_path / "empty")), image_size=(16, 16))


def test_cifar_png_folder_layout(tmp_path):
    root = tmp_path / "data"
    write_pattern_folder(root / "cifar10", {"train": 4, "test": 2}, size=32, classes=("circle", "cross"))
    before = snapshot(root)
    data = load_data(DataConfig(dataset="cifar10", data_dir=str(root), download=False))
    assert data.train.images.shape == (8, 3, 32, 32) and len(data.val) == 4
    assert data.classes == ["circle", "cross"] and data.mean[0] == pytest.approx(0.4914)
    assert snapshot(root) == before


def test_large_folders_stream_from_disk(pattern_folder):
    cfg = DataConfig(dataset="imagefolder", path=str(pattern_folder), max_cache_gib=1e-9, num_workers=0)
    data = load_data(cfg, image_size=(16, 16))
    assert data.train.images is None and data.train.stream is not None
    cached = load_data(DataConfig(dataset="imagefolder", path=str(pattern_folder)), image_size=(16, 16))
    streamed = torch.cat([x for x, _ in iterate_batches(data.train, 32)])
    assert torch.equal(streamed, cached.train.images[:])


def test_subsets_are_seeded(pattern_folder):
    cfg = DataConfig(dataset="imagefolder", path=str(pattern_folder), train_subset=10, val_subset=5)
    a = load_data(cfg, image_size=(16, 16), seed=1)
    b = load_data(cfg, image_size=(16, 16), seed=1)
    assert len(a.train) == 10 and len(a.val) == 5 and torch.equal(a.train.images[:], b.train.images[:])


# ----------------------------------------------------------------------------- batches and augmentation


def test_batches_cover_every_image_once_in_a_seeded_order(pattern_folder):
    split = load_data(DataConfig(dataset="imagefolder", path=str(pattern_folder)), image_size=(16, 16)).train
    order = [torch.cat([y for _, y in iterate_batches(split, 32, True, torch.Generator().manual_seed(s))])
             for s in (0, 0, 1)]
    assert sorted(order[0].tolist()) == sorted(split.labels.tolist())
    assert torch.equal(order[0], order[1]) and not torch.equal(order[0], order[2])


def test_affine_without_change_is_identity():
    x = torch.rand(4, 3, 8, 8)
    out = random_affine(x, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-5)


def test_crop_flip_moves_whole_pixels():
    x = torch.arange(2 * 32 * 32, dtype=torch.float32).view(2, 1, 32, 32) + 1
    out = random_affine(x, torch.Generator().manual_seed(0), translate_px=4, flip=True, integer_shift=True)
    for img, src in zip(out, x):
        values = set(img.unique().tolist()) - {0.0}
        assert values <= set(src.unique().tolist())  # only original pixels or zero padding
        assert (img == 0).float().mean() <= (4 * 32 * 2) / (32 * 32) + 1e-6


def test_augmentations_are_repeatable_and_random():
    x = (torch.rand(8, 1, 28, 28) * 255).to(torch.uint8)
    for kind in ("digits", "flip", "crop_flip", "randaugment"):
        a = augment_batch(x, kind, torch.Generator().manual_seed(0))
        b = augment_batch(x, kind, torch.Generator().manual_seed(0))
        c = augment_batch(x, kind, torch.Generator().manual_seed(1))
        assert a.dtype == torch.float32 and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
        assert torch.equal(a, b), kind
        assert not torch.equal(a, c), kind
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_batch(x, "mixup", torch.Generator())


def test_random_erasing_replaces_one_rectangle_per_chosen_image():
    x = torch.full((400, 3, 28, 28), 7.0)
    out = random_erasing(x, torch.Generator().manual_seed(0), probability=1.0)
    assert torch.equal(out, random_erasing(x, torch.Generator().manual_seed(0), probability=1.0))
    assert not torch.equal(out, random_erasing(x, torch.Generator().manual_seed(1), probability=1.0))
    changed = out != 7.0
    assert torch.equal(changed, changed[:, :1].expand_as(changed))  # the same rectangle in every channel
    for mask in changed[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and mask.sum() == box.numel()  # one solid rectangle, nothing outside it
    noise = out[changed]
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05  # N(0, 1) fill
    half = random_erasing(x, torch.Generator().manual_seed(0), probability=0.5)
    assert 0.4 < (half != 7.0).flatten(1).any(1).float().mean() < 0.6
    assert torch.equal(random_erasing(x, torch.Generator().manual_seed(0), probability=0.0), x)


def test_random_erasing_covers_as_much_as_timms():
    timm_erasing = pytest.importorskip("timm.data.random_erasing")
    torch.manual_seed(0)
    x = torch.full((2000, 1, 28, 28), 7.0)
    ours = (random_erasing(x, torch.Generator().manual_seed(0), probability=1.0) != 7.0).float().mean((1, 2, 3))
    reference = timm_erasing.RandomErasing(probability=1.0, mode="pixel", device="cpu")(x.clone())
    theirs = (reference != 7.0).float().mean((1, 2, 3))
    assert abs(ours.mean() - theirs.mean()) < 0.01 and abs(ours.std() - theirs.std()) < 0.01


def test_preprocess_erases_only_in_training():
    x = torch.full((64, 1, 28, 28), 128, dtype=torch.uint8)
    prep = Preprocess((0.5,), (0.5,), 1, (28, 28), erase_prob=1.0)
    clean = prep(x)
    assert torch.equal(prep(x), clean) and torch.allclose(clean, torch.full_like(clean, 1 / 255), atol=1e-6)
    erased = prep(x, train=True, generator=torch.Generator().manual_seed(0))
    assert ((erased != clean).flatten(1).any(1)).all()
    with pytest.raises(ValueError, match="Generator"):
        prep(x, train=True)
    with pytest.raises(ValueError, match=r"erasing probability must lie in \[0, 1\]"):
        Preprocess((0.5,), (0.5,), 1, (28, 28), erase_prob=1.5)


def test_preprocess_normalises_resizes_and_matches_channels():
    x = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = Preprocess((0.5,), (0.25,), in_chans=1, image_size=(28, 28))(x)
    assert torch.allclose(out, torch.full_like(out, 2.0))
    rgb = Preprocess((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), in_chans=3, image_size=(56, 56))(x)
    assert rgb.shape == (2, 3, 56, 56) and torch.allclose(rgb, torch.ones_like(rgb), atol=1e-4)
    gray = Preprocess((0.0,), (1.0,), in_chans=1, image_size=(8, 8))(torch.full((1, 3, 8, 8), 255, dtype=torch.uint8))
    assert gray.shape == (1, 1, 8, 8) and torch.allclose(gray, torch.ones_like(gray), atol=1e-5)
    with pytest.raises(ValueError, match="Generator"):
        Preprocess((0.0,), (1.0,), 1, (28, 28), augment="digits")(x, train=True)


def test_environment_variables_choose_the_roots(monkeypatch, tmp_path):
    monkeypatch.setenv("VITLAB_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("VITLAB_CACHE_DIR", str(tmp_path / "c"))
    cfg = DataConfig()
    assert cfg.resolved_data_dir() == tmp_path / "d" and cfg.resolved_cache_dir() == tmp_path / "c"
    assert DataConfig(data_dir=str(tmp_path)).resolved_data_dir() == tmp_path
    assert os.environ["VITLAB_DATA_DIR"].endswith("d")


def test_decoding_an_image_folder_shows_a_bar_only_when_asked(pattern_folder, tmp_path, capfd):
    quiet = load_data(DataConfig(dataset="imagefolder", path=str(pattern_folder), num_workers=0,
                                 cache_dir=str(tmp_path / "quiet")), image_size=(16, 16), progress=False)
    assert "decoding" not in capfd.readouterr().err  # `vitlab train --quiet`: nothing on the terminal
    shown = load_data(DataConfig(dataset="imagefolder", path=str(pattern_folder), num_workers=0,
                                 cache_dir=str(tmp_path / "shown")), image_size=(16, 16))
    assert "decoding" in capfd.readouterr().err
    assert torch.equal(quiet.train.images[:], shown.train.images[:])


def _anonymous_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssAnon:")) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RssAnon from /proc (Linux)")
def test_decoding_writes_through_a_memory_map_not_anonymous_memory(tmp_path):
    """The store is filled through a map of its file: anonymous memory grows by a few batches (what the allocator
    keeps of them), not by the data set: many small images, so the data set is many batches."""
    classes = ("circle", "cross", "square")
    write_pattern_folder(tmp_path / "warm", {"train": 100, "val": 1}, size=64, classes=classes)
    write_pattern_folder(tmp_path / "big", {"train": 2000, "val": 2}, size=64, classes=classes)
    warm = DataConfig(dataset="imagefolder", path=str(tmp_path / "warm"), num_workers=0, cache_dir=str(tmp_path / "cache"))
    load_data(warm, image_size=(64, 64), progress=False)  # the decoder's own working memory, reached once
    cfg = replace(warm, path=str(tmp_path / "big"))
    before = _anonymous_mib()
    data = load_data(cfg, image_size=(64, 64), progress=False)
    grown = _anonymous_mib() - before
    decoded_mib = math.prod(data.train.images.shape) / 2**20
    assert decoded_mib > 65 and int(data.train.images[:, :, 28:36, 28:36].float().mean()) > 0  # really decoded
    assert grown < decoded_mib / 2, f"anonymous memory grew by {grown:.0f} MiB for {decoded_mib:.0f} MiB of images"


def test_processes_racing_on_a_cold_cache_decode_once_and_share_the_store(tmp_path, pattern_folder):
    """Two processes (as torchrun ranks) start on a cold cache: one decodes, the other waits and reads its store."""
    import subprocess
    import sys
    import textwrap

    log = tmp_path / "decoded.log"
    script = textwrap.dedent(f"""
        import hashlib
        from vitlab.config import DataConfig
        from vitlab.data import datasets, load_data
        original = datasets.FolderImages.__getitem__
        def counted(self, i):
            with open({str(log)!r}, "a") as f:
                f.write("x\\n")
            return original(self, i)
        datasets.FolderImages.__getitem__ = counted
        cfg = DataConfig(dataset="imagefolder", path={str(pattern_folder)!r}, num_workers=0,
                         cache_dir={str(tmp_path / "cache")!r})
        data = load_data(cfg, image_size=(16, 16), progress=False)
        print(hashlib.sha256(data.train.images[:].numpy().tobytes()).hexdigest())
    """)
    runs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    digests = [run.communicate(timeout=120)[0].strip() for run in runs]
    assert all(run.returncode == 0 for run in runs) and digests[0] == digests[1] and len(digests[0]) == 64
    images = len(list(pattern_folder.rglob("*.png")))
    assert len(log.read_text().splitlines()) == images  # every image decoded once, not once per process
    assert len(list((tmp_path / "cache" / "tensors").glob("*.safetensors"))) == 2  # train and val, one store each


def test_a_subset_decodes_only_the_images_it_takes(pattern_folder, tmp_path, monkeypatch):
    from vitlab.data import datasets

    whole = load_data(DataConfig(dataset="imagefolder", path=str(pattern_folder), num_workers=0), image_size=(16, 16))
    decoded = []
    original = datasets.FolderImages.__getitem__
    monkeypatch.setattr(datasets.FolderImages, "__getitem__", lambda self, i: decoded.append(i) or original(self, i))
    cfg = DataConfig(dataset="imagefolder", path=str(pattern_folder), num_workers=0, train_subset=7, val_subset=5,
                     cache_dir=str(tmp_path / "cache"))
    part = load_data(cfg, image_size=(16, 16), seed=3)
    assert len(decoded) == 7 + 5  # not the whole splits
    same = whole.train.subset(datasets._seeded_perm(len(whole.train), 3)[:7])  # what subsetting after decoding gave
    assert torch.equal(part.train.images[:], same.images[:]) and torch.equal(part.train.labels, same.labels)
    assert torch.equal(part.val.labels, whole.val.subset(datasets._seeded_perm(len(whole.val), 4)[:5]).labels)


def test_prefetched_batches_come_in_order_and_errors_and_early_stops_reach_the_thread():
    import threading
    import time

    from vitlab.data.loader import prefetched

    assert list(prefetched(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetched(broken()):
            got.append(item)
    assert got == [1]
    made = []

    def endless():
        for i in range(10**9):
            made.append(i)
            yield i

    stream = prefetched(endless(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # the consumer stops: the thread stops too, a few items ahead at most
    time.sleep(0.3)
    assert len(made) <= 3 + 2 + 1 and not any(t.name == "vitlab-prefetch" and t.is_alive() for t in threading.enumerate())


def test_batches_in_memory_are_gathered_without_a_thread():
    """A thread's tensor work starts a second team of OpenMP threads beside the model's: a 2-core MNIST training step
    ran 1.7x slower while a thread gathered its batches (1,821 against 3,158 images/s)."""
    import threading

    from vitlab.data.datasets import ImageSplit
    from vitlab.data.loader import iterate_batches

    split = ImageSplit(labels=torch.arange(10), images=torch.zeros(10, 1, 4, 4, dtype=torch.uint8))
    batches = iterate_batches(split, 4, shuffle=True, generator=torch.Generator().manual_seed(0))
    images, labels = next(batches)
    assert images.shape == (4, 1, 4, 4) and len(set(labels.tolist())) == 4
    assert not any(t.name == "vitlab-prefetch" for t in threading.enumerate())
    batches.close()


def test_pinned_batches_equal_plain_ones(pattern_folder):
    from vitlab.config import DataConfig
    from vitlab.data import load_data

    if not torch.cuda.is_available():  # pinning needs a CUDA driver; the plain path is checked everywhere else
        pytest.skip("page-locked memory needs CUDA")
    data = load_data(DataConfig(dataset="imagefolder", path=str(pattern_folder), num_workers=0), image_size=(16, 16), seed=0)
    plain = list(iterate_batches(data.train, 8))
    pinned = list(iterate_batches(data.train, 8, pin_memory=True))
    assert all(torch.equal(a[0], b[0]) and b[0].is_pinned() for a, b in zip(plain, pinned))


def _bytes_read() -> int:
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("read_bytes:"))


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or not Path("/proc/self/io").exists(),
                    reason="evicts pages with posix_fadvise and counts reads in /proc (Linux)")
def test_the_store_reads_the_images_asked_for_and_no_more(tmp_path):
    """Random batches from a store not in the page cache read about their own bytes: memory-mapped reads took the
    device's read-ahead window around every image (8 MiB here, 40 times a 224-pixel image), which made an epoch over
    a store larger than memory read 8 times the store and never finish."""
    from vitlab.data.store import StoredImages

    classes = ("circle", "cross", "square")
    write_pattern_folder(tmp_path / "big", {"train": 100, "val": 1}, size=96, classes=classes)
    cfg = DataConfig(dataset="imagefolder", path=str(tmp_path / "big"), num_workers=0, cache_dir=str(tmp_path / "cache"))
    data = load_data(cfg, image_size=(96, 96), progress=False)
    store = next(p for p in (tmp_path / "cache" / "tensors").glob("*.safetensors") if p.stat().st_size > 2**20)
    images = data.train.images
    assert isinstance(images, StoredImages) and len(images) == 300

    def evict() -> None:
        os.sync()
        with store.open("rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

    evict()
    before = _bytes_read()
    whole = images[:]
    if _bytes_read() - before < store.stat().st_size // 2:
        pytest.skip("this file system does not count its reads in /proc/self/io")
    evict()
    index = torch.randperm(300, generator=torch.Generator().manual_seed(0))[:40]
    before = _bytes_read()
    batch = images[index]
    wanted = 40 * 3 * 96 * 96
    assert torch.equal(batch, whole[index]) and torch.equal(images.take(index)[5:7], whole[index[5:7]])
    assert _bytes_read() - before <= wanted + 40 * 8192 + 65536, "the store read more than the images asked for"
