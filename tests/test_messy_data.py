"""Messy real-world folders: mixed colour modes, 16-bit images, files that cannot be decoded, one-class and
empty-class folders, damaged MNIST files, predict with a bad file, stale temporary files, file modes."""

from __future__ import annotations

import logging
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_pattern_folder
from vitlab.atomic import atomic_write_text
from vitlab.cli import main
from vitlab.config import DataConfig
from vitlab.data import iterate_batches, load_data
from vitlab.data.datasets import BadImageError

SIZE = (16, 16)


def folder_config(path, **extra) -> DataConfig:
    return DataConfig(dataset="imagefolder", path=str(path), num_workers=0, **extra)


@pytest.fixture
def folder(tmp_path, pattern_folder):
    """A private copy of the 3-class pattern folder (train 10 + val 10 per class), to spoil."""
    return shutil.copytree(pattern_folder, tmp_path / "photos")


def add_bad_files(root) -> list[str]:
    """A truncated JPEG, an empty PNG and a text file called .jpg, in the training split."""
    good = Image.open(next((root / "train" / "circle").iterdir())).convert("RGB")
    truncated = root / "train" / "circle" / "truncated.jpg"
    good.resize((64, 64)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:300])
    (root / "train" / "cross" / "empty.png").write_bytes(b"")
    (root / "train" / "stripes" / "notes.jpg").write_text("not an image")
    return ["truncated.jpg", "empty.png", "notes.jpg"]


def test_one_grayscale_image_sorted_first_does_not_make_the_split_grayscale(folder):
    first = folder / "train" / "circle" / "a_gray.png"
    Image.open(next((folder / "train" / "circle").iterdir())).convert("L").save(first)
    data = load_data(folder_config(folder), image_size=SIZE)
    assert data.train.images.shape[1] == 3 and data.val.images.shape[1] == 3
    assert load_data(folder_config(folder), image_size=SIZE, channels=1).train.images.shape[1] == 1  # the model decides


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("val", 2)):
        for name in ("dark", "bright"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(count):
                level = 10_000 if name == "dark" else 50_000
                pixels = (rng.integers(-2000, 2000, SIZE) + level).astype(np.uint16)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    assert Image.open(tmp_path / "train" / "dark" / "0.png").mode.startswith("I")  # really 16-bit on disk
    data = load_data(folder_config(tmp_path), image_size=SIZE)
    dark, bright = (data.train.images[data.train.labels == i].float().mean().item() for i in (1, 0))
    assert data.train.images.shape[1] == 1
    assert abs(dark - 10_000 * 255 / 65535) < 3 and abs(bright - 50_000 * 255 / 65535) < 3  # not 255 everywhere


def test_files_that_cannot_be_decoded_are_listed_or_skipped(folder, caplog):
    good = len(list((folder / "train").rglob("*.png")))
    bad = add_bad_files(folder)
    with pytest.raises(BadImageError) as refused:
        load_data(folder_config(folder), image_size=SIZE)
    message = str(refused.value)
    assert "3 image(s)" in message and all(name in message for name in bad) and "--data.skip_bad_images" in message
    with caplog.at_level(logging.WARNING):
        data = load_data(folder_config(folder, skip_bad_images=True), image_size=SIZE)
    assert len(data.train) == good and all(name in caplog.text for name in bad)  # the good ones; the bad ones named
    assert data.train.labels.min() >= 0


def test_a_decompression_bomb_is_a_bad_image(folder, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 16x16 = 256 pixels > 2 x 100: PIL refuses to decode
    with pytest.raises(BadImageError, match="DecompressionBombError"):
        load_data(folder_config(folder), image_size=SIZE)


def test_streamed_folders_skip_or_name_bad_files(folder):
    good = len(list((folder / "train").rglob("*.png")))
    add_bad_files(folder)
    streamed = load_data(folder_config(folder, max_cache_gib=1e-9, skip_bad_images=True), image_size=SIZE)
    labels = torch.cat([y for _, y in iterate_batches(streamed.train, 8)])
    assert len(labels) == good and labels.min() >= 0
    with pytest.raises(BadImageError, match="skip_bad_images"):  # measuring the images' statistics meets them at once
        load_data(folder_config(folder, max_cache_gib=1e-9), image_size=SIZE)
    strict = load_data(folder_config(folder, max_cache_gib=1e-9, mean=[0.5] * 3, std=[0.5] * 3), image_size=SIZE)
    with pytest.raises(BadImageError, match="skip_bad_images"):
        list(iterate_batches(strict.train, 64))


def test_the_cli_names_the_file_and_the_option_in_one_line(folder, tmp_path, capsys):
    add_bad_files(folder)
    run = tmp_path / "run"
    argv = ["train", "--data.dataset", "imagefolder", "--data.path", str(folder), "--data.num_workers", "0",
            "--train.epochs", "1", "--model.depth", "1", "--quiet", "--run_dir", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "truncated.jpg" in err and "--data.skip_bad_images" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not run.exists()
    assert main([*argv, "--data.skip_bad_images", "true"]) == 0


def test_one_class_and_empty_class_folders_are_refused(tmp_path, capsys):
    one = write_pattern_folder(tmp_path / "one", {"train": 4, "val": 2}, classes=("circle",))
    with pytest.raises(ValueError, match="two classes or more"):
        load_data(folder_config(one), image_size=SIZE)
    assert main(["train", "--data.dataset", "imagefolder", "--data.path", str(one), "--quiet"]) == 2
    assert "two classes or more" in capsys.readouterr().err
    empty = write_pattern_folder(tmp_path / "empty", {"train": 4, "val": 2}, classes=("circle", "cross"))
    (empty / "train" / "nothing").mkdir()
    with pytest.raises(ValueError, match="nothing hold no images"):
        load_data(folder_config(empty), image_size=SIZE)
    assert main(["train", "--data.dataset", "imagefolder", "--data.path", str(empty), "--quiet"]) == 2
    assert "nothing hold no images" in capsys.readouterr().err


def test_damaged_mnist_files_are_reported_as_damaged_not_missing(tmp_path, shared_data):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in (shared_data / "MNIST" / "raw").glob("*.gz"):
        (raw / path.name).write_bytes(path.read_bytes()[:4000])  # truncated
    with pytest.raises(ValueError, match="damaged"):
        load_data(DataConfig(dataset="mnist", data_dir=str(tmp_path), download=False))


def test_predict_reports_each_file_and_fails_when_one_cannot_be_read(folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data.dataset", "imagefolder", "--data.path", str(folder), "--data.num_workers", "0",
                 "--train.epochs", "1", "--model.depth", "1", "--quiet", "--run_dir", str(run)]) == 0
    capsys.readouterr()
    good = next((folder / "val" / "cross").iterdir())
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n")
    assert main(["predict", str(run), str(good), str(broken), "--topk", "2"]) == 2
    out = capsys.readouterr()
    assert str(good) in out.out and "1." in out.out  # the good file's result is printed
    assert "broken.png" in out.err and "1 of 2 images" in out.err and "Traceback" not in out.err
    assert main(["predict", str(run), str(folder / "val" / "cross"), str(tmp_path / "run")]) == 2  # folders: their images
    out = capsys.readouterr()
    assert out.out.count(str(folder / "val" / "cross")) == 10 and "run holds no image files" in out.err


def test_stale_temporary_files_are_removed_when_a_run_resumes(pattern_folder, tmp_path):
    from test_training import tiny_run
    from vitlab.training import train

    run = tmp_path / "run"
    train(tiny_run(pattern_folder, epochs=2), run, progress=False, stop_after_epoch=1)
    stale = run / ".best.safetensors.tmp1234"
    stale.write_bytes(b"x" * 1000)  # what a kill during an old-style write left
    train(None, run, resume=True, progress=False)
    assert not stale.exists() and not list(run.glob(".*tmp*"))


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "out.txt", "hello")
    finally:
        os.umask(old)
    assert path.read_text() == "hello" and (path.stat().st_mode & 0o777) == 0o644  # not mkstemp's 0600


def test_what_archives_and_phones_leave_in_folders_is_handled(folder, tmp_path, capsys):
    """macOS metadata (``._name.jpg``, ``__MACOSX/``) is not data; a broken link is a bad image; a class whose images
    all fail, or a validation class without training images, is refused; phone photos are turned upright."""
    (folder / "train" / "circle" / "._img.png").write_bytes(b"\x00\x05\x16\x07junk")
    (folder / "train" / "__MACOSX" / "circle").mkdir(parents=True)
    (folder / "train" / "__MACOSX" / "circle" / "._a.png").write_bytes(b"junk")
    (folder / "train" / "cross" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(BadImageError, match="gone.png.*skip_bad_images"):
        load_data(folder_config(folder), image_size=SIZE)
    data = load_data(folder_config(folder, skip_bad_images=True), image_size=SIZE)
    assert data.classes == ["circle", "cross", "stripes"] and len(data.train) == 120  # the 120 real images, no more

    for path in (folder / "train" / "stripes").iterdir():
        path.write_bytes(b"not an image")  # every image of a class broken: refused even when skipping
    with pytest.raises(ValueError, match="stripes hold no images that can be decoded"):
        load_data(folder_config(folder, skip_bad_images=True), image_size=SIZE)

    extra = write_pattern_folder(tmp_path / "extra", {"train": 4, "val": 2}, classes=("circle", "cross"))
    (extra / "val" / "bird").mkdir()
    next((extra / "val" / "cross").iterdir()).rename(extra / "val" / "bird" / "x.png")
    with pytest.raises(ValueError, match="bird that .* has not"):
        load_data(folder_config(extra), image_size=SIZE)
    assert main(["train", "--data.dataset", "imagefolder", "--data.path", str(extra / "val" / "bird" / "x.png")]) == 2
    assert "is a file" in capsys.readouterr().err


def test_exif_orientation_is_applied(tmp_path):
    upright = np.zeros((20, 40, 3), dtype=np.uint8)
    upright[:, :20] = 255  # white left half
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1)))  # as a camera stores it: rotated, with a tag
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    stored.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    from vitlab.data.datasets import open_image

    pixels = np.asarray(open_image(tmp_path / "phone.jpg", "L"), dtype=float)
    assert pixels.shape == (20, 40) and pixels[:, :18].mean() > 200 and pixels[:, 22:].mean() < 50
