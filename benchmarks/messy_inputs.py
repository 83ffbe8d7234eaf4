"""Messy real-world input: how `vitlab train`, `predict` and `eval` handle the folders and files people really have.

Each case builds its input in a fresh temporary folder (seeded, small images, a handful per class; removed
afterwards), runs the real CLI as a subprocess (tiny model, one epoch, cache and run directory inside the
temporary folder, a timeout, no network), and classifies what the user gets:

- ``handled``: the command did what it should and the result is right (checked: the run's channels, the
  decoded-image store's pixels, the warning that lists a skipped file, one predict line per readable file ...).
- ``clean_error``: non-zero exit, no traceback, and the message names the offending file, folder or flag.
- ``traceback``: a Python traceback reaches the user.
- ``silently_wrong``: the command succeeds but the result is wrong (clipped pixels, a class that should not
  exist, one channel where three were due, a failure hidden behind exit status 0).
- ``unclear_error``: non-zero exit without a traceback, but the message names neither file nor flag (or says
  something misleading, e.g. "not found" for a damaged file).
- ``timeout``: the command ran past the case's time limit.

Every case has an expected outcome (``handled`` or ``clean_error``); ``ok`` is whether it got that. The cases
that predict share one tiny trained checkpoint (trained once, in its own temporary folder). Run::

    python benchmarks/messy_inputs.py                       # all cases -> benchmarks/results/messy-inputs.json
    python benchmarks/messy_inputs.py --only zero_byte png16_range --out /tmp/m.json
    python benchmarks/messy_inputs.py --list                # the case names and descriptions

Needs $VITLAB_DATA_DIR holding MNIST/raw/*.gz and cifar10/ PNG folders for the cases that copy them (skipped
otherwise). About 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gzip
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

RESULTS = Path(__file__).resolve().parent / "results"
CATEGORIES = ("handled", "clean_error", "traceback", "silently_wrong", "unclear_error", "timeout")
TIMEOUT_S = 120
TINY = ["--model.img_size", "32", "--model.patch_size", "8", "--model.embed_dim", "32", "--model.depth", "1",
        "--model.num_heads", "2", "--train.epochs", "1", "--train.batch_size", "16", "--data.num_workers", "0", "--quiet"]
SKIP = ["--data.skip_bad_images", "true"]
SKIP_FLAG = "skip_bad_images"
FLAG = re.compile(r"--[a-z_]+\.[a-z_]+")


# ----------------------------------------------------------------------------- running the CLI


@dataclass
class Proc:
    """One finished CLI command."""

    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def text(self) -> str:
        return self.stdout + "\n" + self.stderr


def vitlab_command() -> list[str]:
    """The `vitlab` entry point of the running interpreter's environment (else ``python -m vitlab.cli``)."""
    script = Path(sys.executable).parent / "vitlab"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vitlab.cli"]


def offline_env(tmp: Path) -> dict[str, str]:
    """The environment for a case: caches and data root inside ``tmp``, Hugging Face offline, any download refused."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update({"VITLAB_DATA_DIR": str(tmp / "empty-data-root"), "VITLAB_CACHE_DIR": str(tmp / "vitlab-cache"),
                "TORCH_HOME": str(tmp / "torch-home"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
                "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "MPLBACKEND": "Agg",
                "PYTHONWARNINGS": "default", "TQDM_DISABLE": "1"})
    return env


def cli(tmp: Path, *args: str, umask: int = 0o022, timeout: int = TIMEOUT_S) -> Proc:
    """``vitlab ARGS`` run in ``tmp`` with the offline environment."""
    argv = [*vitlab_command(), *args]
    start = time.perf_counter()
    try:
        done = subprocess.run(argv, cwd=tmp, env=offline_env(tmp), capture_output=True, text=True, timeout=timeout,
                              umask=umask, errors="replace")
    except subprocess.TimeoutExpired as exc:
        out = [x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (exc.stdout, exc.stderr)]
        return Proc(argv, -9, out[0], out[1], time.perf_counter() - start, timed_out=True)
    return Proc(argv, done.returncode, done.stdout, done.stderr, time.perf_counter() - start)


def train(tmp: Path, path: Path | None, *extra: str, val_fraction: str | None = "0.25", run: str = "run",
          **kw) -> Proc:
    """``vitlab train`` on the image folder ``path`` with the tiny settings, cache and run directory in ``tmp``."""
    data = ["--data.dataset", "imagefolder", "--data.path", str(path)] if path is not None else []
    split = ["--data.val_fraction", val_fraction] if val_fraction else []
    return cli(tmp, "train", *data, *split, *TINY, "--data.cache_dir", str(tmp / "cache"), "--run_dir", str(tmp / run),
               *extra, **kw)


# ----------------------------------------------------------------------------- outcomes and classification


Check = Callable[[], "tuple[bool, str]"]


@dataclass
class Outcome:
    """What a case ran and how to judge it: ``check`` says whether a successful result is right; ``needles`` must
    all appear in an error message for it to count as clean (default: a path under the case's folder or a flag);
    ``forbid``: words that make a message misleading; ``ok_exit``: the exit status of the right result."""

    proc: Proc
    check: Check | None = None
    needles: tuple[str, ...] = ()
    forbid: tuple[str, ...] = ()
    ok_exit: int = 0
    tmp: Path | None = None


class SetupFailed(Exception):
    """A preparatory command of a case failed; the case is judged by that command."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.proc.stderr[-200:])
        self.outcome = outcome


def must(proc: Proc, tmp: Path) -> Proc:
    """``proc`` if it succeeded, else raise :class:`SetupFailed` so the case reports that failure."""
    if proc.rc != 0:
        raise SetupFailed(Outcome(proc, tmp=tmp))
    return proc


def traceback_line(text: str) -> str | None:
    """The last line of the first Python traceback in ``text``, or None without one."""
    if "Traceback (most recent call last)" not in text:
        return None
    tail = text.split("Traceback (most recent call last)", 1)[1].splitlines()
    exception = [line for line in tail if line and not line.startswith((" ", "\t")) and ":" in line]
    return (exception[0] if exception else tail[-1]).strip()


def error_line(proc: Proc) -> str:
    """The line of an error message a user reads first."""
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    flagged = [line for line in lines if "error" in line.lower()]
    return (flagged or lines or [line.strip() for line in proc.stdout.splitlines() if line.strip()] or [""])[0]


def names_something(text: str, tmp: Path | None) -> bool:
    """Whether ``text`` names a path under ``tmp`` or a ``--section.flag``."""
    return bool(FLAG.search(text)) or (tmp is not None and (str(tmp) in text or str(tmp.resolve()) in text))


def classify(outcome: Outcome) -> tuple[str, str]:
    """(category, message) of a case's outcome."""
    proc = outcome.proc
    if proc.timed_out:
        return "timeout", f"no result after {proc.seconds:.0f} s"
    tb = traceback_line(proc.text)
    if tb is not None:
        return "traceback", tb
    if proc.rc == outcome.ok_exit and outcome.check is not None:
        right, note = outcome.check()
        if right:
            return "handled", note
        if proc.rc == 0:
            return "silently_wrong", note
    elif proc.rc == 0:
        return "silently_wrong", "succeeded where an error was due: " + (error_line(proc) or "no output")
    message = error_line(proc)
    clean = all(n in proc.text for n in outcome.needles) if outcome.needles else names_something(proc.text, outcome.tmp)
    if clean and not any(word in proc.text for word in outcome.forbid):
        return "clean_error", message
    return "unclear_error", message


# ----------------------------------------------------------------------------- images


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def rgb_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    """A noisy RGB image (width, height) whose base colour depends on ``seed``."""
    r = rng(seed)
    base = r.integers(0, 256, 3)
    pixels = np.clip(base + r.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def gray_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    return rgb_image(seed, size).convert("L")


def write_classes(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 5, ext: str = ".png",
                  make: Callable[[int], Image.Image] = rgb_image, seed: int = 0) -> list[Path]:
    """``per_class`` images per class folder under ``root``; returns the files."""
    files = []
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            path = folder / f"img{i:03d}{ext}"
            make(seed + 100 * c + i).save(path)
            files.append(path)
    return files


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    rgb_image(7, (48, 48)).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def png_bytes(width: int, height: int, color_type: int, bit_depth: int, raw: bytes) -> bytes:
    """A PNG file (one IDAT chunk) with the given header and filtered scanline bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def decompression_bomb(path: Path) -> Path:
    """A tiny PNG whose header claims 30000 x 30000 pixels, above twice PIL's MAX_IMAGE_PIXELS (PIL refuses it)."""
    assert 30000 * 30000 > 2 * Image.MAX_IMAGE_PIXELS
    path.write_bytes(png_bytes(30000, 30000, 0, 8, b"\x00" * 64))
    return path


def png16_rgb(path: Path, seed: int) -> Path:
    """A 48-bit (16 bits per channel) RGB PNG with values over the full 16-bit range."""
    values = rng(seed).integers(0, 65536, (32, 32, 3)).astype(">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in values)
    path.write_bytes(png_bytes(32, 32, 2, 16, raw))
    return path


def gradient16(seed: int) -> Image.Image:
    """A 16-bit grayscale (I;16) image spanning 0..65535."""
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32)
    return Image.fromarray(np.roll(ramp, seed, axis=1).astype(np.uint16))


def gradient_float(seed: int) -> Image.Image:
    """A float (mode F) image spanning 0..1."""
    ramp = np.linspace(0.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    return Image.fromarray(np.roll(ramp, seed, axis=1), mode="F")


def half_white_exif_rotated(path: Path) -> Path:
    """A JPEG that displays with its left half white and right half black, stored rotated with EXIF orientation 6."""
    shown = np.zeros((32, 32), np.uint8)
    shown[:, :16] = 255
    stored = Image.fromarray(shown).convert("RGB").transpose(Image.Transpose.ROTATE_90)  # display rotates it back
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, "JPEG", quality=95, exif=exif)
    with Image.open(path) as im:  # the file really displays as intended
        upright = np.asarray(ImageOps.exif_transpose(im).convert("L"), dtype=float)
    assert upright[:, :16].mean() > 200 > 50 > upright[:, 16:].mean()
    return path


# ----------------------------------------------------------------------------- what a run left


def stores(tmp: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The decoded-image stores under ``tmp/cache``: file name -> (images uint8 (N, C, H, W), bad mask)."""
    out = {}
    for path in sorted((tmp / "cache" / "tensors").glob("*.safetensors")):
        blob = path.read_bytes()
        size = struct.unpack("<Q", blob[:8])[0]
        header = json.loads(blob[8 : 8 + size])
        arrays = []
        for key in ("images", "bad"):
            begin, end = header[key]["data_offsets"]
            raw = np.frombuffer(blob, np.uint8, end - begin, 8 + size + begin)
            arrays.append(raw.reshape(header[key]["shape"]))
        out[path.name] = (arrays[0], arrays[1].astype(bool))
    return out


def train_store(tmp: Path, folder: str = "data") -> tuple[np.ndarray, np.ndarray]:
    """The store of the training folder ``tmp/folder`` (a store is named ``<parent>-<folder>-<hash>``)."""
    path = tmp / folder
    found = [v for k, v in stores(tmp).items() if k.startswith(f"{path.parent.name}-{path.name}-")]
    if len(found) != 1:
        raise AssertionError(f"expected one store for {folder}, found {sorted(stores(tmp))}")
    return found[0]


def checkpoint_info(tmp: Path, run: str = "run") -> dict:
    return json.loads((tmp / run / "best.json").read_text())


def trained(tmp: Path, run: str = "run") -> bool:
    return (tmp / run / "best.safetensors").is_file() and (tmp / run / "metrics.jsonl").is_file()


def checked(fn: Callable[[], tuple[bool, str]]) -> Check:
    """``fn`` as a check whose exceptions (a missing file, a failed assertion) count as a wrong result."""

    def run() -> tuple[bool, str]:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - the result is not what it should be
            return False, f"check failed: {type(exc).__name__}: {exc}"

    return run


def trained_with(tmp: Path, channels: int | None = None, classes: list[str] | None = None, count: int | None = None,
                 extra: Callable[[np.ndarray], tuple[bool, str]] | None = None, folder: str = "data") -> Check:
    """A check: the run finished, with ``channels`` input channels and these ``classes``, its store holding ``count``
    decodable images; ``extra`` judges the decoded training images."""

    def run() -> tuple[bool, str]:
        if not trained(tmp):
            return False, "no checkpoint written"
        info = checkpoint_info(tmp)
        images, bad = train_store(tmp, folder)
        good = images[~bad]
        notes = [f"in_chans {info['model']['in_chans']}", f"classes {info['classes']}", f"store {tuple(good.shape)}"]
        if channels is not None and (info["model"]["in_chans"] != channels or good.shape[1] != channels):
            return False, f"expected {channels} channel(s): " + ", ".join(notes)
        if classes is not None and info["classes"] != classes:
            return False, f"expected classes {classes}: " + ", ".join(notes)
        if count is not None and len(good) != count:
            return False, f"expected {count} images decoded: " + ", ".join(notes)
        if extra is not None:
            right, note = extra(good)
            notes.append(note)
            if not right:
                return False, ", ".join(notes)
        return True, ", ".join(notes)

    return checked(run)


def skipped_listed(tmp: Path, proc: Proc, names: list[str], count: int, folder: str = "data") -> Check:
    """A check: training finished, with a warning that lists each of ``names``, and ``count`` images left."""

    def run() -> tuple[bool, str]:
        warned = [line for line in proc.stderr.splitlines() if all(n in line for n in names)]
        if not warned:
            return False, f"no warning listing {names}"
        right, note = trained_with(tmp, count=count, folder=folder)()
        return right, f"{warned[0].strip()[:160]} | {note}"

    return checked(run)


# ----------------------------------------------------------------------------- the cases


@dataclass
class Case:
    name: str
    description: str
    expected: str
    build: Callable[[Path], Outcome]
    needs: tuple[str, ...] = field(default_factory=tuple)
    """paths under the data root the case copies (skipped without them)."""


CASES: list[Case] = []


def case(name: str, description: str, expected: str, needs: tuple[str, ...] = ()) -> Callable:
    """Register the decorated function as a case."""
    assert expected in ("handled", "clean_error")

    def register(fn: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
        CASES.append(Case(name, description, expected, fn, needs))
        return fn

    return register


def bad_image_cases(name: str, what: str, make: Callable[[Path], Path], filename: str, hint: bool = True) -> None:
    """Two cases for one kind of undecodable file in an otherwise good folder: without the skip option a clean
    error naming the file and (``hint``) the option; with it a warning listing the file and training on the rest."""

    def build(tmp: Path, skip: bool) -> Outcome:
        data = tmp / "data"
        write_classes(data)
        bad = make(data / "cat" / filename)
        proc = train(tmp, data, *(SKIP if skip else []))
        if skip:
            return Outcome(proc, skipped_listed(tmp, proc, [bad.name], 10), tmp=tmp)
        return Outcome(proc, needles=(bad.name, SKIP_FLAG) if hint else (bad.name,), tmp=tmp)

    refusal = "refused, naming the file" + (" and --data.skip_bad_images" if hint else "")
    case(name, f"{what} in a class folder: {refusal}", "clean_error")(
        lambda tmp: build(tmp, False))
    case(f"{name}_skip", f"{what} with --data.skip_bad_images true: left out, warning lists it", "handled")(
        lambda tmp: build(tmp, True))


def _zero_byte(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def _text_file(path: Path) -> Path:
    path.write_text("this is not an image, it is a note someone saved with the wrong name\n")
    return path


def _broken_symlink(path: Path) -> Path:
    path.symlink_to(path.parent / "moved-away.png")
    return path


bad_image_cases("truncated_jpeg", "a JPEG cut in half", truncated_jpeg, "broken.jpg")
bad_image_cases("zero_byte", "a zero-byte .png", _zero_byte, "empty.png")
bad_image_cases("text_as_jpg", "a text file named .jpg", _text_file, "notes.jpg")
bad_image_cases("decompression_bomb", "a PNG claiming 30000x30000 pixels (> 2x PIL's MAX_IMAGE_PIXELS)",
                decompression_bomb, "bomb.png")
bad_image_cases("broken_symlink", "a dangling symlink named .png", _broken_symlink, "dangling.png", hint=False)


@case("all_bad_skip", "every image of a class undecodable, with --data.skip_bad_images true: refused, naming the "
      "class or folder", "clean_error")
def all_bad_skip(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data, ("cat",))
    (data / "dog").mkdir()
    for i in range(3):
        truncated_jpeg(data / "dog" / f"d{i}.jpg")
    proc = train(tmp, data, *SKIP)

    def taught() -> tuple[bool, str]:
        classes = checkpoint_info(tmp)["classes"] if trained(tmp) else []
        return "dog" not in classes, f"trained with classes {classes} though no image of dog could be decoded"

    return Outcome(proc, checked(taught), needles=("dog",), tmp=tmp)


# colour modes and bit depths


@case("grayscale_first_in_rgb", "one grayscale image sorted first in an RGB folder: the run stays 3-channel", "handled")
def grayscale_first(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data)
    gray_image(3).save(data / "cat" / "000-gray.png")

    def colourful(images: np.ndarray) -> tuple[bool, str]:
        spread = float(np.abs(images[:, 0].astype(int) - images[:, 2].astype(int)).mean())
        return spread > 5, f"mean |R-B| {spread:.1f}"

    return Outcome(train(tmp, data), trained_with(tmp, channels=3, count=11, extra=colourful), tmp=tmp)


def full_range(images: np.ndarray) -> tuple[bool, str]:
    """Whether decoded pixels keep the source's dynamic range (not clipped to 255, not crushed to black)."""
    values = np.unique(images)
    note = f"pixels {int(images.min())}..{int(images.max())}, {len(values)} distinct, mean {images.mean():.1f}"
    return bool(images.min() <= 10 and images.max() >= 245 and len(values) >= 64 and 60 < images.mean() < 195), note


@case("png16_range", "a folder of 16-bit grayscale PNGs (I;16, full 0..65535 range): scaled, not clipped", "handled")
def png16_range(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data, make=gradient16)
    with Image.open(data / "cat" / "img000.png") as im:
        assert im.mode.startswith("I"), im.mode
    return Outcome(train(tmp, data), trained_with(tmp, channels=1, count=10, extra=full_range), tmp=tmp)


@case("png16_rgb", "a folder of 48-bit RGB PNGs (16 bits per channel): read with their range", "handled")
def png16_rgb_folder(tmp: Path) -> Outcome:
    data = tmp / "data"
    for c, name in enumerate(("cat", "dog")):
        (data / name).mkdir(parents=True)
        for i in range(5):
            png16_rgb(data / name / f"img{i}.png", 10 * c + i)
    return Outcome(train(tmp, data), trained_with(tmp, channels=3, count=10, extra=full_range), tmp=tmp)


@case("float_tiff", "a folder of float TIFFs (mode F, 0..1): scaled to 0..255", "handled")
def float_tiff(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data, ext=".tif", make=gradient_float)
    return Outcome(train(tmp, data), trained_with(tmp, channels=1, count=10, extra=full_range), tmp=tmp)


@case("cmyk_jpeg", "CMYK JPEGs (pure cyan): 3 channels, the colour right", "handled")
def cmyk_jpeg(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data, ext=".jpg", make=lambda seed: Image.new("CMYK", (32, 32), (255, 0, 0, 0)))

    def cyan(images: np.ndarray) -> tuple[bool, str]:
        means = images.reshape(len(images), 3, -1).mean(axis=(0, 2))
        return bool(means[0] < 60 and means[1] > 190 and means[2] > 190), f"mean RGB {np.round(means).tolist()}"

    return Outcome(train(tmp, data), trained_with(tmp, channels=3, count=10, extra=cyan), tmp=tmp)


@case("palette_transparency", "palette PNGs with a transparent colour among RGB PNGs: decoded, 3 channels", "handled")
def palette_transparency(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data)
    for i in range(2):
        im = rgb_image(50 + i).quantize(16)
        im.save(data / "dog" / f"pal{i}.png", transparency=0)
    return Outcome(train(tmp, data), trained_with(tmp, channels=3, count=12), tmp=tmp)


@case("rgba_png", "a folder of RGBA PNGs: 3 channels, colour kept", "handled")
def rgba_png(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data, make=lambda seed: Image.new("RGBA", (32, 32), (200, 30, 30, 255)))

    def red(images: np.ndarray) -> tuple[bool, str]:
        means = images.reshape(len(images), 3, -1).mean(axis=(0, 2))
        return bool(abs(means[0] - 200) < 5 and means[1] < 40), f"mean RGB {np.round(means).tolist()}"

    return Outcome(train(tmp, data), trained_with(tmp, channels=3, count=10, extra=red), tmp=tmp)


@case("la_png", "a folder of grayscale+alpha (LA) PNGs: 1 channel, gray levels kept", "handled")
def la_png(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data, make=lambda seed: gray_image(seed).convert("LA"))
    return Outcome(train(tmp, data), trained_with(tmp, channels=1, count=10), tmp=tmp)


@case("bilevel_1bit", "a folder of 1-bit PNGs: 1 channel, black and white (0 and 255)", "handled")
def bilevel(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data, make=lambda seed: gray_image(seed).convert("1"))

    def black_and_white(images: np.ndarray) -> tuple[bool, str]:
        values = set(np.unique(images).tolist())
        return {0, 255} <= values, f"{len(values)} distinct values, min {min(values)}, max {max(values)}"

    return Outcome(train(tmp, data), trained_with(tmp, channels=1, count=10, extra=black_and_white), tmp=tmp)


@case("exif_rotated_jpeg", "JPEGs stored rotated with EXIF orientation 6 (as phones write them): trained upright",
      "handled")
def exif_rotated(tmp: Path) -> Outcome:
    data = tmp / "data"
    for name in ("cat", "dog"):
        (data / name).mkdir(parents=True)
        for i in range(4):
            half_white_exif_rotated(data / name / f"phone{i}.jpg")

    def upright(images: np.ndarray) -> tuple[bool, str]:
        left, right = float(images[..., :16].mean()), float(images[..., 16:].mean())
        return left > right + 100, f"mean left half {left:.0f}, right half {right:.0f} (upright: left white)"

    return Outcome(train(tmp, data), trained_with(tmp, count=8, extra=upright), tmp=tmp)


@case("explicit_in_chans_1", "--model.in_chans 1 on an RGB folder: converted to grayscale", "handled")
def explicit_gray(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data)
    return Outcome(train(tmp, data, "--model.in_chans", "1"), trained_with(tmp, channels=1, count=10), tmp=tmp)


# file names, formats and junk


@case("uppercase_extensions", "images named .JPG, .PNG, .Jpeg, .TIFF: all found", "handled")
def uppercase(tmp: Path) -> Outcome:
    data = tmp / "data"
    for c, name in enumerate(("cat", "dog")):
        (data / name).mkdir(parents=True)
        for i, (ext, kind) in enumerate(((".JPG", "JPEG"), (".PNG", "PNG"), (".Jpeg", "JPEG"), (".TIFF", "TIFF"))):
            rgb_image(10 * c + i).save(data / name / f"IMG_{i}{ext}", format=kind)
    return Outcome(train(tmp, data), trained_with(tmp, count=8), tmp=tmp)


@case("mixed_formats", "PNG, JPEG, BMP, WebP, TIFF and PPM in one folder: all decoded", "handled")
def mixed_formats(tmp: Path) -> Outcome:
    data = tmp / "data"
    exts = (".png", ".jpg", ".bmp", ".webp", ".tiff", ".ppm")
    for c, name in enumerate(("cat", "dog")):
        (data / name).mkdir(parents=True)
        for i, ext in enumerate(exts):
            rgb_image(10 * c + i).save(data / name / f"img{i}{ext}")
    return Outcome(train(tmp, data), trained_with(tmp, channels=3, count=12), tmp=tmp)


@case("png_named_jpg", "PNG files (with alpha) named .jpg: decoded by content", "handled")
def png_named_jpg(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data)
    for i in range(2):
        rgb_image(70 + i).convert("RGBA").save(data / "cat" / f"really-png{i}.jpg", format="PNG")
    return Outcome(train(tmp, data), trained_with(tmp, channels=3, count=12), tmp=tmp)


@case("hidden_junk_files", ".DS_Store, Thumbs.db, desktop.ini, README.txt, labels.csv beside the images: ignored",
      "handled")
def hidden_junk(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data)
    junk = rng(1).bytes(2048)
    for folder in (data, data / "cat", data / "dog"):
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + junk)
        (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + junk)
        (folder / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (data / "README.txt").write_text("my photos\n")
    (data / "cat" / "labels.csv").write_text("file,label\nimg000.png,cat\n")
    return Outcome(train(tmp, data), trained_with(tmp, classes=["cat", "dog"], count=10), tmp=tmp)


def apple_double(path: Path) -> Path:
    """A macOS AppleDouble resource file (``._name``): magic 0x00051607 and junk, no image."""
    path.write_bytes(struct.pack(">II", 0x00051607, 0x00020000) + b"Mac OS X        " + rng(2).bytes(4000))
    return path


@case("appledouble_files", "macOS '._img.jpg' AppleDouble files beside the images: ignored", "handled")
def appledouble(tmp: Path) -> Outcome:
    data = tmp / "data"
    files = write_classes(data, ext=".jpg")
    for f in files:
        apple_double(f.with_name("._" + f.name))
    return Outcome(train(tmp, data), trained_with(tmp, classes=["cat", "dog"], count=10), tmp=tmp)


@case("macosx_zip_leftovers", "a '__MACOSX/' folder (a Mac zip unpacked elsewhere) beside the classes: not a class",
      "handled")
def macosx_folder(tmp: Path) -> Outcome:
    data = tmp / "data"
    files = write_classes(data, ext=".jpg")
    for f in files:
        target = data / "__MACOSX" / f.parent.name / ("._" + f.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        apple_double(target)
    return Outcome(train(tmp, data), trained_with(tmp, classes=["cat", "dog"], count=10), tmp=tmp)


@case("hidden_class_dirs", "'.ipynb_checkpoints/' and '.thumbnails/' holding images beside the classes: not classes",
      "handled")
def hidden_dirs(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data)
    write_classes(data / ".ipynb_checkpoints", ("cat",), per_class=2)
    write_classes(data / ".thumbnails", ("x",), per_class=2)
    return Outcome(train(tmp, data), trained_with(tmp, classes=["cat", "dog"]), tmp=tmp)


@case("nested_subfolders", "class folders with nested sub-folders (cat/2019/summer/*.png): their images count", "handled")
def nested(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data, per_class=3)
    for name in ("cat", "dog"):
        deep = data / name / "2019" / "summer"
        deep.mkdir(parents=True)
        for i in range(2):
            rgb_image(90 + i).save(deep / f"n{i}.png")
    return Outcome(train(tmp, data), trained_with(tmp, classes=["cat", "dog"], count=10), tmp=tmp)


@case("unicode_and_spaces", "spaces and non-ASCII in class and file names ('café crème', 'Ünïcode ☕ 1.png')",
      "handled")
def unicode_names(tmp: Path) -> Outcome:
    data = tmp / "data"
    classes = ("café crème", "red apples")
    for c, name in enumerate(classes):
        (data / name).mkdir(parents=True)
        for i in range(4):
            rgb_image(10 * c + i).save(data / name / f"Ünïcode ☕ {i}.png")
    return Outcome(train(tmp, data), trained_with(tmp, classes=list(classes), count=8), tmp=tmp)


def one_odd_size(tmp: Path, size: tuple[int, int]) -> Outcome:
    """A folder of 32x32 images and one of ``size``: trained, every image resized to the model's size."""
    data = tmp / "data"
    write_classes(data)
    rgb_image(5, size).save(data / "dog" / "odd.png")
    return Outcome(train(tmp, data), trained_with(tmp, channels=3, count=11), tmp=tmp)


@case("one_pixel_image", "a 1x1 image among 32x32 ones: resized like the rest", "handled")
def one_pixel(tmp: Path) -> Outcome:
    return one_odd_size(tmp, (1, 1))


@case("very_wide_image", "a 2000x20 panorama among 32x32 images: resized and cropped", "handled")
def very_wide(tmp: Path) -> Outcome:
    return one_odd_size(tmp, (2000, 20))


@case("mixed_sizes", "images from 17x40 to 96x64 in one folder: all resized to the model's size", "handled")
def mixed_sizes(tmp: Path) -> Outcome:
    data = tmp / "data"
    sizes = ((17, 40), (96, 64), (32, 32), (50, 31), (64, 64))
    for c, name in enumerate(("cat", "dog")):
        (data / name).mkdir(parents=True)
        for i, size in enumerate(sizes):
            rgb_image(10 * c + i, size).save(data / name / f"img{i}.png")

    def square(images: np.ndarray) -> tuple[bool, str]:
        return images.shape[2:] == (32, 32), f"decoded at {images.shape[2:]}"

    return Outcome(train(tmp, data), trained_with(tmp, count=10, extra=square), tmp=tmp)


@case("icon_sized_images", "a folder of 5x5 icons and no --model.img_size: the size the data decides trains", "handled")
def icon_sized(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data, make=lambda seed: rgb_image(seed, (5, 5)))
    sized = TINY[4:]  # without --model.img_size and --model.patch_size
    assert sized[0] == "--model.embed_dim"
    proc = cli(tmp, "train", "--data.dataset", "imagefolder", "--data.path", str(data), "--data.val_fraction", "0.25",
               *sized, "--data.cache_dir", str(tmp / "cache"), "--run_dir", str(tmp / "run"))

    def small() -> tuple[bool, str]:
        size = checkpoint_info(tmp)["model"]["img_size"]
        right, note = trained_with(tmp, channels=3, count=10)()
        return right and max(size) <= 5, f"img_size {size}, {note}"

    return Outcome(proc, checked(small), tmp=tmp)


@case("symlinked_class_folder", "a class folder that is a symlink to a folder elsewhere: followed", "handled")
def symlinked_class(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data, ("cat",))
    write_classes(tmp / "elsewhere", ("dog",), seed=50)
    (data / "dog").symlink_to(tmp / "elsewhere" / "dog", target_is_directory=True)
    return Outcome(train(tmp, data), trained_with(tmp, classes=["cat", "dog"], count=10), tmp=tmp)


@case("gif_only_class", "a class folder holding only GIFs (not a supported extension): refused, naming the class",
      "clean_error")
def gif_only(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data, ("cat",))
    write_classes(data, ("dog",), ext=".gif")
    return Outcome(train(tmp, data), needles=("dog",), tmp=tmp)


# folder structure


@case("one_class", "a folder with a single class folder: refused, naming the folder", "clean_error")
def one_class(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data, ("cat",))
    return Outcome(train(tmp, data), needles=(str(data),), tmp=tmp)


@case("empty_class", "an empty class folder beside two good ones: refused, naming the class", "clean_error")
def empty_class(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data)
    (data / "bird").mkdir()
    return Outcome(train(tmp, data), needles=("bird",), tmp=tmp)


@case("images_without_class_folders", "images directly in --data.path, no class folders: refused, naming the folder",
      "clean_error")
def flat_images(tmp: Path) -> Outcome:
    data = tmp / "data"
    data.mkdir()
    for i in range(6):
        rgb_image(i).save(data / f"img{i}.png")
    return Outcome(train(tmp, data), needles=(str(data),), tmp=tmp)


@case("val_missing_class", "val/ lacks one of train/'s classes: trains with train/'s classes", "handled")
def val_missing_class(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data / "train", ("bird", "cat", "dog"))
    write_classes(data / "val", ("cat", "dog"), per_class=2, seed=500)
    proc = train(tmp, data, val_fraction=None)
    return Outcome(proc, trained_with(tmp, classes=["bird", "cat", "dog"], count=15, folder="data/train"), tmp=tmp)


@case("val_extra_class", "val/ has a class train/ lacks: refused with a message naming it, not silently dropped",
      "clean_error")
def val_extra_class(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data / "train", ("cat", "dog"))
    write_classes(data / "val", ("bird", "cat", "dog"), per_class=2, seed=500)
    proc = train(tmp, data, val_fraction=None)

    def said() -> tuple[bool, str]:
        lines = [line for line in proc.stderr.splitlines() if "bird" in line]
        if not lines:
            return False, "val/bird (2 images) silently left out of validation; no message names it"
        return trained(tmp), lines[0].strip()[:160]

    return Outcome(proc, checked(said), needles=("bird",), tmp=tmp)


@case("train_and_valid_folders", "train/ and valid/ (a common spelling): valid/ used for validation", "handled")
def train_valid(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data / "train")
    write_classes(data / "valid", per_class=2, seed=500)
    return Outcome(train(tmp, data, val_fraction=None), trained_with(tmp, classes=["cat", "dog"], folder="data/train"),
                   tmp=tmp)


@case("no_val_no_fraction", "train/ without val/ and no --data.val_fraction: refused, naming --data.val_fraction",
      "clean_error")
def no_val(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data / "train")
    return Outcome(train(tmp, data, val_fraction=None), needles=("--data.val_fraction",), tmp=tmp)


@case("path_is_a_file", "--data.path pointing at an image file: refused, naming the path", "clean_error")
def path_file(tmp: Path) -> Outcome:
    image = tmp / "photo.png"
    rgb_image(1).save(image)
    return Outcome(train(tmp, image), needles=(str(image),), forbid=("does not exist",), tmp=tmp)


@case("path_missing", "--data.path pointing at a folder that does not exist: refused, naming it", "clean_error")
def path_missing(tmp: Path) -> Outcome:
    return Outcome(train(tmp, tmp / "no-such-folder"), needles=("no-such-folder",), tmp=tmp)


@case("path_empty", "--data.path pointing at an empty folder: refused, naming it", "clean_error")
def path_empty(tmp: Path) -> Outcome:
    (tmp / "data").mkdir()
    return Outcome(train(tmp, tmp / "data"), needles=(str(tmp / "data"),), tmp=tmp)


@case("imagefolder_without_path", "--data.dataset imagefolder and no --data.path: refused, naming --data.path",
      "clean_error")
def no_path(tmp: Path) -> Outcome:
    proc = cli(tmp, "train", "--data.dataset", "imagefolder", *TINY, "--run_dir", str(tmp / "run"))
    return Outcome(proc, needles=("--data.path",), tmp=tmp)


# flags


@case("unknown_dataset", "--data.dataset imagefolders (a typo): refused, naming the value", "clean_error")
def unknown_dataset(tmp: Path) -> Outcome:
    proc = cli(tmp, "train", "--data.dataset", "imagefolders", *TINY, "--run_dir", str(tmp / "run"))
    return Outcome(proc, needles=("imagefolders",), tmp=tmp)


@case("val_fraction_out_of_range", "--data.val_fraction 1.5: refused, naming the flag", "clean_error")
def val_fraction(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data)
    return Outcome(train(tmp, data, val_fraction="1.5"), needles=("val_fraction",), tmp=tmp)


def refused_flag(tmp: Path, flag: str, value: str, needle: str) -> Outcome:
    """A 2-class folder trained with ``flag value``, which must be refused with a message naming ``needle``."""
    data = tmp / "data"
    write_classes(data)
    return Outcome(train(tmp, data, flag, value), needles=(needle,), tmp=tmp)


@case("patch_not_dividing", "--model.patch_size 7 with --model.img_size 32: refused, naming patch_size", "clean_error")
def patch(tmp: Path) -> Outcome:
    return refused_flag(tmp, "--model.patch_size", "7", "patch_size")


@case("misspelt_flag", "--data.pth (a typo): refused, naming it and the closest real flag", "clean_error")
def misspelt(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data)
    proc = cli(tmp, "train", "--data.dataset", "imagefolder", "--data.pth", str(data), *TINY, "--run_dir", str(tmp / "r"))
    return Outcome(proc, needles=("data.pth", "--data.path"), tmp=tmp)


@case("num_classes_disagrees", "--model.num_classes 5 on a 2-class folder: refused, naming num_classes", "clean_error")
def num_classes(tmp: Path) -> Outcome:
    return refused_flag(tmp, "--model.num_classes", "5", "num_classes")


@case("batch_size_zero", "--train.batch_size 0: refused, naming batch_size", "clean_error")
def batch_zero(tmp: Path) -> Outcome:
    return refused_flag(tmp, "--train.batch_size", "0", "batch_size")


# predict and eval


@functools.lru_cache(maxsize=1)
def fixture_checkpoint() -> Path:
    """A tiny RGB 2-class checkpoint (cat, dog), trained once for every predict case."""
    root = Path(tempfile.mkdtemp(prefix="vitlab-messy-fixture-"))
    FIXTURE_DIRS.append(root)
    write_classes(root / "data")
    proc = train(root, root / "data")
    if proc.rc != 0:
        raise RuntimeError(f"training the fixture checkpoint failed: {error_line(proc)}")
    return root / "run" / "best.safetensors"


FIXTURE_DIRS: list[Path] = []


def predicted(proc: Proc, good: list[Path], bad: list[Path]) -> Check:
    """A check: each of ``good`` has its own result (path line, then a ranked class) and each of ``bad`` an error line."""

    def run() -> tuple[bool, str]:
        lines = proc.stdout.splitlines()
        missing = [p.name for p in good if not any(line == str(p) and i + 1 < len(lines) and lines[i + 1].strip()
                                                    .startswith("1.") for i, line in enumerate(lines))]
        unnamed = [p.name for p in bad if not any(p.name in line for line in proc.stderr.splitlines())]
        if missing or unnamed:
            return False, f"no result for {missing}; bad files not named: {unnamed}"
        return True, f"{len(good)} result(s), {len(bad)} named as unreadable, exit {proc.rc}"

    return checked(run)


@case("predict_good_and_bad", "vitlab predict with one good and one truncated image: good reported, bad named, exit 2",
      "handled")
def predict_mixed(tmp: Path) -> Outcome:
    good, bad = tmp / "good.png", truncated_jpeg(tmp / "broken.jpg")
    rgb_image(1).save(good)
    proc = cli(tmp, "predict", str(fixture_checkpoint()), str(good), str(bad), "--topk", "2")
    return Outcome(proc, predicted(proc, [good], [bad]), ok_exit=2, tmp=tmp)


@case("predict_odd_modes", "predict on 16-bit, grayscale, RGBA, CMYK, palette, 1x1 and EXIF-rotated files (RGB model)",
      "handled")
def predict_modes(tmp: Path) -> Outcome:
    files = {"g16.png": gradient16(0), "gray.png": gray_image(1), "rgba.png": rgb_image(2).convert("RGBA"),
             "cmyk.jpg": Image.new("CMYK", (32, 32), (0, 255, 0, 0)), "pal.png": rgb_image(3).quantize(8),
             "dot.png": rgb_image(4, (1, 1)), "float.tif": gradient_float(5)}
    for name, im in files.items():
        im.save(tmp / name)
    paths = [tmp / name for name in files] + [half_white_exif_rotated(tmp / "phone.jpg")]
    proc = cli(tmp, "predict", str(fixture_checkpoint()), *map(str, paths), "--topk", "1")
    return Outcome(proc, predicted(proc, paths, []), tmp=tmp)


@case("predict_missing_file", "vitlab predict on a file that does not exist: refused, naming it", "clean_error")
def predict_missing(tmp: Path) -> Outcome:
    proc = cli(tmp, "predict", str(fixture_checkpoint()), str(tmp / "no-such-photo.jpg"))
    return Outcome(proc, needles=("no-such-photo.jpg",), tmp=tmp)


@case("predict_folder", "vitlab predict given a folder of images: each image in it predicted", "handled")
def predict_folder(tmp: Path) -> Outcome:
    folder = tmp / "holiday photos"
    folder.mkdir()
    images = [folder / f"p{i}.png" for i in range(3)]
    for i, path in enumerate(images):
        rgb_image(i).save(path)
    proc = cli(tmp, "predict", str(fixture_checkpoint()), str(folder))
    return Outcome(proc, predicted(proc, images, []), tmp=tmp)


def fake_checkpoint(tmp: Path, content: bytes) -> Path:
    path = tmp / "downloaded" / "best.safetensors"
    path.parent.mkdir()
    path.write_bytes(content)
    return path


@case("predict_random_bytes_checkpoint", "predict with random bytes named best.safetensors: refused, naming the file",
      "clean_error")
def predict_random_checkpoint(tmp: Path) -> Outcome:
    ckpt = fake_checkpoint(tmp, rng(3).bytes(5000))
    image = tmp / "x.png"
    rgb_image(1).save(image)
    return Outcome(cli(tmp, "predict", str(ckpt), str(image)), needles=("best.safetensors",), tmp=tmp)


@case("eval_random_bytes_checkpoint", "vitlab eval on random bytes named best.safetensors: refused, naming the file",
      "clean_error")
def eval_random_checkpoint(tmp: Path) -> Outcome:
    ckpt = fake_checkpoint(tmp, rng(4).bytes(5000))
    return Outcome(cli(tmp, "eval", str(ckpt)), needles=("best.safetensors",), tmp=tmp)


@case("predict_truncated_checkpoint", "predict with a real checkpoint cut in half (an interrupted copy): refused, "
      "naming the file", "clean_error")
def predict_truncated_checkpoint(tmp: Path) -> Outcome:
    real = fixture_checkpoint().read_bytes()
    ckpt = fake_checkpoint(tmp, real[: len(real) // 2])
    image = tmp / "x.png"
    rgb_image(1).save(image)
    return Outcome(cli(tmp, "predict", str(ckpt), str(image)), needles=("best.safetensors",), tmp=tmp)


# built-in data sets copied from the data root


def data_root() -> Path:
    """$VITLAB_DATA_DIR (the cases that need a built-in data set are skipped without it)."""
    return Path(os.environ.get("VITLAB_DATA_DIR", "/nonexistent-set-VITLAB_DATA_DIR"))


def copy_mnist(tmp: Path) -> Path:
    """The four MNIST IDX .gz files copied (writable) into ``tmp/root/MNIST/raw``; returns the raw folder."""
    raw = tmp / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in sorted((data_root() / "MNIST" / "raw").glob("*.gz")):
        shutil.copyfile(f, raw / f.name)
    return raw


def mnist_train(tmp: Path) -> Proc:
    return cli(tmp, "train", "--data.dataset", "mnist", "--data.data_dir", str(tmp / "root"), "--data.download", "false",
               "--data.cache_dir", str(tmp / "cache"), "--run_dir", str(tmp / "run"), "--train.epochs", "1",
               "--data.train_subset", "256", "--data.val_subset", "256", "--quiet")


@case("mnist_truncated_gz", "MNIST with train-images-idx3-ubyte.gz truncated: said to be damaged, not 'not found'",
      "clean_error", needs=("MNIST/raw/train-images-idx3-ubyte.gz",))
def mnist_truncated(tmp: Path) -> Outcome:
    raw = copy_mnist(tmp)
    victim = raw / "train-images-idx3-ubyte.gz"
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 3)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz") as f:  # the others are intact
        assert f.read(4) == b"\x00\x00\x08\x01"
    return Outcome(mnist_train(tmp), needles=("damaged", "train-images-idx3-ubyte"), forbid=("not found",), tmp=tmp)


@case("mnist_missing_file", "MNIST with t10k-labels-idx1-ubyte.gz missing (no download): refused, naming the file and "
      "--data.data_dir", "clean_error", needs=("MNIST/raw/t10k-labels-idx1-ubyte.gz",))
def mnist_missing(tmp: Path) -> Outcome:
    raw = copy_mnist(tmp)
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    return Outcome(mnist_train(tmp), needles=("t10k-labels-idx1-ubyte", "--data.data_dir"), tmp=tmp)


def copy_cifar_pngs(tmp: Path) -> Path:
    """A CIFAR-10 PNG folder (all 10 classes, 3 train and 1 test image each) copied into ``tmp/root/cifar10``."""
    root = tmp / "root" / "cifar10"
    for split, count in (("train", 3), ("test", 1)):
        for class_dir in sorted((data_root() / "cifar10" / split).iterdir()):
            target = root / split / class_dir.name
            target.mkdir(parents=True)
            for f in sorted(class_dir.glob("*.png"))[:count]:
                shutil.copyfile(f, target / f.name)
    return root


def cifar_case(tmp: Path, skip: bool) -> Outcome:
    root = copy_cifar_pngs(tmp)
    victim = sorted((root / "train" / "cat").glob("*.png"))[0]
    victim.write_bytes(victim.read_bytes()[:200])
    before = sorted(str(p) for p in (tmp / "root").rglob("*"))
    proc = cli(tmp, "train", "--data.dataset", "cifar10", "--data.data_dir", str(tmp / "root"), "--data.download", "false",
               *TINY, "--data.cache_dir", str(tmp / "cache"), "--run_dir", str(tmp / "run"), *(SKIP if skip else []))
    if not skip:
        return Outcome(proc, needles=(victim.name, SKIP_FLAG), tmp=tmp)

    def right() -> tuple[bool, str]:
        ok, note = skipped_listed(tmp, proc, [victim.name], 29, "root/cifar10/train")()
        untouched = sorted(str(p) for p in (tmp / "root").rglob("*")) == before
        classes = checkpoint_info(tmp)["classes"] if trained(tmp) else []
        return ok and untouched and len(classes) == 10, f"{note} | data root untouched: {untouched}"

    return Outcome(proc, checked(right), tmp=tmp)


@case("cifar_png_truncated", "CIFAR-10 PNG folder with one truncated PNG: refused, naming the file and the option",
      "clean_error", needs=("cifar10/train", "cifar10/test"))
def cifar_truncated(tmp: Path) -> Outcome:
    return cifar_case(tmp, False)


@case("cifar_png_truncated_skip", "the same with --data.skip_bad_images true: left out with a warning, root untouched",
      "handled", needs=("cifar10/train", "cifar10/test"))
def cifar_truncated_skip(tmp: Path) -> Outcome:
    return cifar_case(tmp, True)


# run directories and caches


@case("stale_tmp_then_resume", "crash-leftover '.best.safetensors.tmp1234' files in a run dir, then --resume: removed",
      "handled")
def stale_tmp(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data)
    must(train(tmp, data), tmp)
    leftovers = [tmp / "run" / ".best.safetensors.tmp1234", tmp / "run" / ".resume.pt.tmpk3j2x.pt"]
    for f in leftovers:
        f.write_bytes(rng(5).bytes(1000))
    proc = cli(tmp, "train", "--resume", str(tmp / "run"), "--train.epochs", "2", "--quiet")

    def gone() -> tuple[bool, str]:
        left = [f.name for f in leftovers if f.exists()]
        epochs = len((tmp / "run" / "metrics.jsonl").read_text().splitlines())
        return not left and epochs == 2, f"left over: {left or 'none'}; {epochs} epochs in metrics.jsonl"

    return Outcome(proc, checked(gone), tmp=tmp)


def permissions(tmp: Path, umask: int) -> Outcome:
    """Train under ``umask``: every file of the run directory and the cache gets 0o666 & ~umask, folders 0o777 & ~umask."""
    data = tmp / "data"
    write_classes(data)
    proc = train(tmp, data, umask=umask)

    def modes() -> tuple[bool, str]:
        wrong = []
        for top in (tmp / "run", tmp / "cache"):
            for p in [top, *top.rglob("*")]:
                due = (0o777 if p.is_dir() else 0o666) & ~umask
                if p.stat().st_mode & 0o777 != due:
                    wrong.append(f"{p.relative_to(tmp)} {oct(p.stat().st_mode & 0o777)} (due {oct(due)})")
        files = sum(1 for p in (tmp / "run").rglob("*") if p.is_file())
        return trained(tmp) and not wrong, "; ".join(wrong[:4]) or f"all {files} run files and the cache as due"

    return Outcome(proc, checked(modes), tmp=tmp)


@case("umask_022", "outputs under umask 022: files 0644, folders 0755 (run dir and cache)", "handled")
def umask_022(tmp: Path) -> Outcome:
    return permissions(tmp, 0o022)


@case("umask_027", "outputs under umask 027: files 0640, folders 0750 (run dir and cache)", "handled")
def umask_027(tmp: Path) -> Outcome:
    return permissions(tmp, 0o027)


@case("run_dir_not_empty", "--run_dir pointing at a folder with someone's files: refused, nothing overwritten",
      "clean_error")
def run_dir_exists(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data)
    (tmp / "run").mkdir()
    (tmp / "run" / "notes.txt").write_text("keep me\n")
    proc = train(tmp, data)
    intact = (tmp / "run" / "notes.txt").read_text() == "keep me\n" and len(list((tmp / "run").iterdir())) == 1
    return Outcome(proc, needles=(str(tmp / "run"),) if intact else ("<overwritten>",), tmp=tmp)


@case("resume_missing_run", "--resume pointing at a folder that does not exist: refused, naming it", "clean_error")
def resume_missing(tmp: Path) -> Outcome:
    return Outcome(cli(tmp, "train", "--resume", str(tmp / "no-such-run")), needles=("no-such-run",), tmp=tmp)


@case("damaged_cache_store", "the decoded-image store in the cache truncated (disk full, kill): rebuilt, training works",
      "handled")
def damaged_store(tmp: Path) -> Outcome:
    data = tmp / "data"
    write_classes(data)
    must(train(tmp, data), tmp)
    store = next((tmp / "cache" / "tensors").glob("*.safetensors"))
    with open(store, "r+b") as f:
        f.truncate(store.stat().st_size // 2)
    proc = train(tmp, data, run="run2")

    def rebuilt() -> tuple[bool, str]:
        images, bad = train_store(tmp)
        return trained(tmp, "run2") and len(images) == 10, f"store back with {len(images)} images"

    return Outcome(proc, checked(rebuilt), tmp=tmp)


# ----------------------------------------------------------------------------- the harness


def run_case(item: Case) -> dict:
    """Build and run one case in a fresh temporary folder; its result row."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"vitlab-messy-{item.name}-") as name:
        tmp = Path(name)
        try:
            outcome = item.build(tmp)
        except SetupFailed as failed:
            outcome = failed.outcome
        got, message = classify(outcome)
    return {"name": item.name, "description": item.description, "expected": item.expected, "got": got,
            "ok": got == item.expected, "seconds": round(time.perf_counter() - start, 1),
            "message_first_line": message[:300], "exit_code": outcome.proc.rc}


def available(item: Case) -> bool:
    return all((data_root() / need).exists() for need in item.needs)


def print_row(row: dict) -> None:
    mark = "ok" if row["ok"] else "NOT OK"
    print(f"{row['name']:<34} {row['expected']:<12} {row['got']:<15} {row['seconds']:>6.1f}  {mark}", flush=True)
    if not row["ok"]:
        print(f"{'':<34} -> {row['message_first_line'][:200]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "messy-inputs.json")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these cases")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    args = parser.parse_args(argv)
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names), "case names must be unique"
    if args.list:
        for c in CASES:
            print(f"{c.name:<34} {c.expected:<12} {c.description}")
        return 0
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; see --list")
    chosen = [c for c in CASES if not args.only or c.name in args.only]
    print(f"{'case':<34} {'expected':<12} {'got':<15} {'seconds':>6}", flush=True)
    rows, skipped = [], []
    try:
        for item in chosen:
            if not available(item):
                skipped.append(item.name)
                continue
            rows.append(run_case(item))
            print_row(rows[-1])
    finally:
        for root in FIXTURE_DIRS:
            shutil.rmtree(root, ignore_errors=True)
    counts = dict(Counter(row["got"] for row in rows))
    report = {"cases": rows, "counts": {k: counts.get(k, 0) for k in CATEGORIES}, "total": len(rows),
              "ok": sum(row["ok"] for row in rows), "skipped_no_data": skipped,
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "command": " ".join(["python", "benchmarks/messy_inputs.py", *(argv if argv is not None else sys.argv[1:])]),
              "seconds": round(sum(row["seconds"] for row in rows), 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\n{report['ok']}/{report['total']} as expected; {report['counts']}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
