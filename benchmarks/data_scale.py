"""Data at scale (issue 28): one epoch over an image folder larger than memory, from the decoded store and streamed.

Generates a seeded synthetic image folder (``--images`` 256x256 RGB JPEGs, quality 90, in ``--classes`` class folders,
95% train / 5% val) under ``--work`` (reused on a rerun when it is complete), then trains a tiny ViT (224 px, patch 32,
width 64, depth 2: the data path dominates) for one epoch with `vitlab train` in a subprocess, per mode:

* ``store``: ``--data.max_cache_gib`` above the decoded size: every image is decoded once into the memory-mapped store
  on disk (``$VITLAB_CACHE_DIR`` inside the work folder). Run twice: cold (decodes, then trains) and warm (the store
  exists: trains only); the decode time is the difference of their set-up times (wall minus the run's ``elapsed_s``).
* ``stream``: the default threshold (lowered below the training split's decoded size when that is under 8 GiB, as at
  a small ``--images``): DataLoader workers decode the JPEGs every epoch.
* ``ram``: the throughput baseline, the same model on ``--data.train_subset --subset`` images, decoded into a small
  store that fits in the page cache.
* ``--memory-cap-gib``: the store runs (and the read test) in a memory cgroup of that size, which holds their page
  cache as well as their own memory: a store larger than the cap behaves as one larger than the machine's RAM, so the
  case is measured in minutes at 30,000 images instead of hours at 200,000. The read test then picks 4,096 random
  images of the training store, evicted from the page cache first, through a memory map (what vitlab did before) and
  through vitlab's ``StoredImages``, and counts the bytes the kernel read (``/proc/self/io``).
* ``--torchrun``: a cold cache, ``torchrun --nproc_per_node 2`` on ``--torchrun-images`` training images (gloo on the
  CPU, ``OMP_NUM_THREADS=1``) against one process on the same images: one store per split must be written.

While each subprocess runs, the anonymous RSS (``RssAnon``) and the total RSS of it and all its descendants are summed
every 0.5 s and the peaks kept (also ``Pss_Anon``, which counts pages a forked DataLoader worker shares with its
parent once). Writes ``benchmarks/results/data-scale-<tag>.json`` and prints a Markdown table. Examples:

    python benchmarks/data_scale.py --tag cpu-200k                                  # 200,000 images, all modes
    python benchmarks/data_scale.py --images 3000 --subset 1000 --tag tiny --work /tmp/ds-tiny --keep
    python benchmarks/data_scale.py --images 3000 --modes ram --torchrun --torchrun-images 2000 --tag tiny-ddp
    python benchmarks/data_scale.py --images 30000 --subset 10000 --modes store,ram --memory-cap-gib 3 --tag cpu-30k-cap3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SIZE, QUALITY, IMG_SIZE, VAL_EVERY = 256, 90, 224, 20  # every 20th image goes to val/: 5%
GOAL_ANON_GIB, GOAL_RATIO = 3.0, 0.9
GIB = 2**30
LAYOUT = 2  # how images are named and split (image_path); a folder of another layout is generated again
MODEL = ["--model.img_size", str(IMG_SIZE), "--model.patch_size", "32", "--model.in_chans", "3", "--model.embed_dim", "64",
         "--model.depth", "2", "--model.num_heads", "2", "--train.epochs", "1", "--train.batch_size", "256",
         "--data.num_workers", "2", "--quiet"]


# ----------------------------------------------------------------------------- the synthetic image folder


def image_path(data: Path, index: int, classes: int) -> Path:
    """Where image ``index`` goes: class ``index % classes``; ``val/`` for every VAL_EVERY-th image of a class."""
    split = "val" if is_val(index, classes) else "train"
    return data / split / f"class_{index % classes:03d}" / f"{index:07d}.jpg"


def is_val(index: int | np.ndarray, classes: int) -> bool | np.ndarray:
    """Whether image ``index`` is a validation image: the VAL_EVERY-th of its class, so every class has some."""
    return (index // classes) % VAL_EVERY == VAL_EVERY - 1


def make_image(index: int, classes: int, seed: int) -> np.ndarray:
    """A SIZE x SIZE RGB image: a random 8x8 colour grid upsampled bicubically, plus stripes whose angle, frequency
    and colour depend on the class (random phase), so a model has something to learn."""
    from PIL import Image

    rng = np.random.default_rng([seed, index])
    label = index % classes
    grid = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    base = np.asarray(grid.resize((SIZE, SIZE), Image.BICUBIC), dtype=np.float32)
    angle, cycles = math.pi * label / classes, 3 + 2 * (label % 4)
    colour = np.random.default_rng([seed, 10**9 + label]).uniform(-1, 1, 3).astype(np.float32)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    stripes = np.cos(2 * math.pi * cycles * (xx * math.cos(angle) + yy * math.sin(angle)) + rng.uniform(0, 2 * math.pi))
    return np.clip(base * 0.7 + 38 + 50 * stripes[..., None] * colour, 0, 255).astype(np.uint8)


def _write_images(job: tuple[Path, range, int, int]) -> int:
    """Pool worker: encode and write the images of one chunk; the number written."""
    from PIL import Image

    data, indices, classes, seed = job
    for index in indices:
        Image.fromarray(make_image(index, classes, seed)).save(image_path(data, index, classes), quality=QUALITY)
    return len(indices)


def count_images(data: Path) -> int:
    """JPEG files under ``data``'s train/ and val/ class folders."""
    return sum(1 for split in ("train", "val") if (data / split).is_dir()
               for d in os.scandir(data / split) if d.is_dir() for f in os.scandir(d.path) if f.name.endswith(".jpg"))


def generate(data: Path, images: int, classes: int, seed: int, workers: int) -> dict:
    """The image folder at ``data``, made in parallel, or reused when its marker and file count match: its record."""
    marker = data / "generated.json"
    wanted = {"images": images, "classes": classes, "seed": seed, "size": SIZE, "quality": QUALITY, "layout": LAYOUT}
    if marker.exists():
        record = json.loads(marker.read_text())
        if {k: record.get(k) for k in wanted} == wanted and count_images(data) == images:
            print(f"reusing {images} images in {data} (generated in {record['generation_s']} s)", flush=True)
            return {**record, "reused": True}
    shutil.rmtree(data, ignore_errors=True)
    for split in ("train", "val"):
        for label in range(classes):
            (data / split / f"class_{label:03d}").mkdir(parents=True, exist_ok=True)
    chunks = [(data, range(i, min(i + 500, images)), classes, seed) for i in range(0, images, 500)]
    start, done = time.perf_counter(), 0
    with multiprocessing.Pool(workers, initializer=signal.signal, initargs=(signal.SIGTERM, signal.SIG_DFL)) as pool:
        for written in pool.imap_unordered(_write_images, chunks):
            done += written
            if done % 20000 < 500 or done == images:
                print(f"generated {done}/{images} images ({time.perf_counter() - start:.0f} s)", flush=True)
    elapsed = time.perf_counter() - start
    record = {**wanted, "generation_s": round(elapsed, 1), "images_per_s": round(images / elapsed, 1),
              "jpeg_bytes": disk_bytes(data), "workers": workers}
    marker.write_text(json.dumps(record, indent=2) + "\n")
    return {**record, "reused": False}


def disk_bytes(path: Path) -> int:
    """Bytes allocated on disk for the files under ``path`` (what `du` counts; sparse parts are not)."""
    if not path.exists():
        return 0
    return sum(os.stat(os.path.join(root, f)).st_blocks * 512 for root, _, files in os.walk(path) for f in files)


# ----------------------------------------------------------------------------- memory of a process tree


def _proc_fields(pid: int, name: str, fields: Iterable[str]) -> dict[str, int]:
    """kB fields of /proc/PID/<name> (status, smaps_rollup), as bytes; missing ones (a process gone) are 0."""
    out = dict.fromkeys(fields, 0)
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/{name}").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in out:
                out[key] = int(value.split()[0]) * 1024
    return out


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, from the parent ids in /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


class TreeMemory(threading.Thread):
    """Samples every ``every`` s the summed RssAnon, VmRSS and Pss_Anon of a process and its descendants (keeps the
    peaks), and when each file first appears in the store folder ``watch`` (a store's temporary, then the store)."""

    def __init__(self, pid: int, watch: Path, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.watch, self.every, self.stop = pid, watch, every, threading.Event()
        self.peak = {"anon": 0, "rss": 0, "pss_anon": 0}
        self.processes, self.started, self.appeared = 0, time.perf_counter(), {}

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.sample()

    def sample(self) -> None:
        """One sample of the whole tree."""
        tree = descendants(self.pid)
        status = [_proc_fields(pid, "status", ("RssAnon", "VmRSS")) for pid in tree]
        pss = sum(_proc_fields(pid, "smaps_rollup", ("Pss_Anon",))["Pss_Anon"] for pid in tree)
        now = {"anon": sum(s["RssAnon"] for s in status), "rss": sum(s["VmRSS"] for s in status), "pss_anon": pss}
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
        self.processes = max(self.processes, len(tree))
        with contextlib.suppress(OSError):
            for name in os.listdir(self.watch):
                self.appeared.setdefault(name, time.perf_counter() - self.started)

    def store_writes(self) -> dict[str, float]:
        """Seconds from a store's temporary file appearing to the store itself (its decoding, +-``every``)."""
        final = {name: at for name, at in self.appeared.items() if not name.startswith(".")}
        temporary = {name[1:].split(".tmp", 1)[0]: at for name, at in self.appeared.items() if name.startswith(".")}
        return {name: round(at - temporary[name], 1) for name, at in final.items() if name in temporary}

    def gib(self) -> dict[str, float]:
        return {"peak_anon_rss_gib": round(self.peak["anon"] / GIB, 3), "peak_pss_anon_gib": round(self.peak["pss_anon"] / GIB, 3),
                "peak_rss_gib": round(self.peak["rss"] / GIB, 3), "peak_processes": self.processes}


# ----------------------------------------------------------------------------- one training run


def stop_group(proc: subprocess.Popen) -> None:
    """End the process group this script started for ``proc`` (it runs in its own session), if still running."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(wait)
            return


def memory_cgroup(cap_gib: float) -> Path:
    """A memory cgroup limited to ``cap_gib`` (v2, else v1): its ``cgroup.procs`` file."""
    limit = str(int(cap_gib * GIB))
    for base, limit_file in ((Path("/sys/fs/cgroup"), "memory.max"), (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes")):
        if (base / limit_file).exists() or (base / "cgroup.controllers").exists():
            group = base / "vitlab-data-scale"
            try:
                group.mkdir(exist_ok=True)
                (group / limit_file).write_text(limit)
            except OSError as exc:
                raise SystemExit(f"--memory-cap-gib needs a writable memory cgroup ({group}: {exc}); run as root") from exc
            return group / "cgroup.procs"
    raise SystemExit("--memory-cap-gib: no memory cgroup found under /sys/fs/cgroup")


def run_train(name: str, command: list[str], cache: Path, run_dir: Path, env: dict[str, str] | None = None,
              cgroup: Path | None = None) -> dict:
    """Run ``command`` (a `vitlab train` writing ``run_dir``) with ``$VITLAB_CACHE_DIR=cache`` (in the memory
    ``cgroup`` when given): wall time, memory peaks and the epoch's numbers from metrics.jsonl."""
    env = {**os.environ, "VITLAB_CACHE_DIR": str(cache), **(env or {})}
    env.pop("WORLD_SIZE", None)
    log = run_dir.parent / f"{run_dir.name}.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] {' '.join(command[2:])}", flush=True)
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=(lambda: cgroup.write_text(str(os.getpid()))) if cgroup else None)
        memory = TreeMemory(proc.pid, cache / "tensors")
        memory.start()
        try:
            code = proc.wait()
        finally:
            memory.stop.set()
            stop_group(proc)
        wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{name} failed (exit {code}); the end of {log}:\n{log.read_text()[-3000:]}")
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    result = {"wall_s": round(wall, 1), "setup_s": round(wall - record["elapsed_s"], 1), "epoch_s": round(record["epoch_s"], 1),
              "images_per_s": round(record["train_images_per_s"], 1), "val_acc": round(record["val_acc"], 4), **memory.gib(),
              "store_writes_s": memory.store_writes()}
    print(f"[{name}] {json.dumps(result)}", flush=True)
    return result


def store_files(cache: Path) -> list[str]:
    """Names of the files in the cache's store folder (temporaries included)."""
    folder = cache / "tensors"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@dataclass
class Bench:
    """Where the runs go and what every `vitlab train` gets: the work folder, the classes, more flags."""

    work: Path
    classes: int
    keep: bool
    flags: list[str]
    cgroup: Path | None = None  # the store runs' memory cgroup (--memory-cap-gib)

    def train(self, name: str, cache: str, extra: list[str], processes: int = 1, env: dict[str, str] | None = None,
              capped: bool = False) -> dict:
        """`vitlab train` of the tiny model (in one process or under torchrun) as runs/<name>, caching in <cache>."""
        run_dir = self.work / "runs" / name
        launcher = ["-m", "vitlab.cli"] if processes == 1 else ["-m", "torch.distributed.run", "--standalone",
                                                                f"--nproc_per_node={processes}", "-m", "vitlab.cli"]
        command = [sys.executable, *launcher, "train", "--data.dataset", "imagefolder", "--data.path", str(self.work / "data"),
                   "--model.num_classes", str(self.classes), *MODEL, "--run_dir", str(run_dir), *extra, *self.flags]
        return run_train(name, command, self.work / cache, run_dir, env, self.cgroup if capped else None)

    def cache_record(self, cache: str) -> dict:
        """Disk use and file names of a cache's store folder; the cache is deleted after (unless ``keep``)."""
        folder = self.work / cache
        record = {"store_bytes": disk_bytes(folder / "tensors"), "store_files": store_files(folder)}
        if not self.keep:
            shutil.rmtree(folder, ignore_errors=True)
        return record


# ----------------------------------------------------------------------------- the modes


def sizes(gen: dict, subset: int) -> dict:
    """Image counts and decoded bytes of the splits (and of the in-RAM subset)."""
    val = int(np.count_nonzero(is_val(np.arange(gen["images"]), gen["classes"])))
    train = gen["images"] - val
    per_image = 3 * IMG_SIZE * IMG_SIZE
    return {"train_images": train, "val_images": val, "subset_images": min(subset, train), "jpeg_bytes": gen["jpeg_bytes"],
            "decoded_bytes": (train + val) * per_image, "decoded_train_bytes": train * per_image,
            "decoded_val_bytes": val * per_image, "decoded_subset_bytes": min(subset, train) * per_image}


def run_store(bench: Bench, size: dict) -> dict:
    """Cold then warm runs on the whole folder, decoded into the store. The decode time: from each store's temporary
    file appearing to its rename (watched), and the difference of the two runs' set-up times (a cross-check)."""
    threshold = round(size["decoded_bytes"] / GIB * 1.1 + 1, 2)
    extra = ["--data.max_cache_gib", str(threshold)]
    cold = bench.train("store-cold", "cache-store", extra, capped=True)
    warm = bench.train("store-warm", "cache-store", extra, capped=True)
    reads = store_reads(bench) if bench.cgroup else None
    decoded, setup_diff = size["train_images"] + size["val_images"], round(cold["setup_s"] - warm["setup_s"], 1)
    decode_s = max(1e-9, sum(cold["store_writes_s"].values()) or setup_diff)
    return {"store_cold": {**cold, "max_cache_gib": threshold},
            "store": {**warm, "max_cache_gib": threshold, **bench.cache_record("cache-store")},
            **({"reads": reads} if reads else {}),
            "decode": {"images": decoded, "decode_s": round(decode_s, 1), "images_per_s": round(decoded / decode_s, 1),
                       "setup_difference_s": setup_diff}}


READS = """
import json, os, sys, time
import numpy as np, torch
from vitlab.data.store import _read
path, count = sys.argv[1], 4096
images, _, _ = _read(__import__("pathlib").Path(path))
index = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:count]
def read_bytes():
    return next(int(l.split()[1]) for l in open("/proc/self/io") if l.startswith("read_bytes:"))
def evict():
    fd = os.open(path, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
out = {}
mapped = np.memmap(path, dtype=np.uint8, mode="r", offset=images.data_start, shape=(images.stored, int(np.prod(images.item_shape))))
for name, gather in (("memory_map", lambda rows: torch.from_numpy(mapped[rows.sort().values.numpy()].copy())),
                     ("stored_images", lambda rows: images[rows])):
    evict(); before, start = read_bytes(), time.perf_counter()
    for rows in index.split(256):
        gather(rows)
    seconds = time.perf_counter() - start
    out[name] = {"images_per_s": round(count / seconds, 1), "read_bytes": read_bytes() - before,
                 "wanted_bytes": count * int(np.prod(images.item_shape))}
    out[name]["read_over_wanted"] = round(out[name]["read_bytes"] / out[name]["wanted_bytes"], 2)
print(json.dumps(out))
"""


def store_reads(bench: Bench) -> dict:
    """Random reads of 4,096 images of the training store, cold, in the memory cgroup: a memory map against
    vitlab's ``StoredImages`` (bytes read, images per second)."""
    store = max((bench.work / "cache-store" / "tensors").glob("*.safetensors"), key=lambda p: p.stat().st_size)
    proc = subprocess.run([sys.executable, "-c", READS, str(store)], capture_output=True, text=True, check=True,
                          preexec_fn=lambda: bench.cgroup.write_text(str(os.getpid())))
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"[reads] {json.dumps(result)}", flush=True)
    return result


def run_stream(bench: Bench, size: dict) -> dict:
    """The training split streamed from the JPEGs (the validation split, smaller, still goes to the store)."""
    threshold = 8.0  # vitlab's default
    if size["decoded_train_bytes"] <= threshold * GIB:  # a small folder: between the val and train decoded sizes
        threshold = round((size["decoded_train_bytes"] + size["decoded_val_bytes"]) / 2 / GIB, 4)
    result = bench.train("stream", "cache-stream", ["--data.max_cache_gib", str(threshold)])
    return {"stream": {**result, "max_cache_gib": threshold, **bench.cache_record("cache-stream")}}


def run_ram(bench: Bench, size: dict) -> dict:
    """The in-RAM baseline: the first ``subset`` training images, decoded into a store that fits in memory."""
    threshold = round(size["decoded_bytes"] / GIB * 1.1 + 1, 2)
    result = bench.train("ram", "cache-ram", ["--data.train_subset", str(size["subset_images"]), "--data.max_cache_gib",
                                              str(threshold)])
    return {"ram": {**result, "train_images": size["subset_images"], **bench.cache_record("cache-ram")}}


def run_torchrun(bench: Bench, images: int) -> dict:
    """Cold caches: one process, then torchrun with 2 processes (gloo), on ``images`` training images and a
    proportional validation subset; the 2 processes must write one store per split."""
    extra = ["--data.train_subset", str(images), "--data.val_subset", str(max(1, images // (VAL_EVERY - 1))),
             "--data.max_cache_gib", "1000"]
    out: dict = {"images": images}
    for name, processes in (("single", 1), ("torchrun", 2)):
        result = bench.train(name, f"cache-{name}", extra, processes, {"OMP_NUM_THREADS": "1"})
        out[name] = {**result, **bench.cache_record(f"cache-{name}")}
    files = out["torchrun"]["store_files"]
    out["one_store_per_split"] = len(files) == 2 and all(sum(f.startswith(f"data-{s}-") for f in files) == 1
                                                         for s in ("train", "val"))
    out["wall_ratio_torchrun_over_single"] = round(out["torchrun"]["wall_s"] / out["single"]["wall_s"], 3)
    return out


# ----------------------------------------------------------------------------- results


def judge(modes: dict) -> dict:
    """Throughput ratios against the in-RAM baseline and the goals: anonymous RSS and store throughput."""
    ram = modes.get("ram", {}).get("images_per_s")
    ratios = {f"{m}_over_ram": round(modes[m]["images_per_s"] / ram, 3) for m in ("store", "store_cold", "stream")
              if ram and m in modes}
    big = [m for m in ("store_cold", "store", "stream") if m in modes]
    goals = {f"{m}_anon_rss_le_{GOAL_ANON_GIB:g}_gib": modes[m]["peak_anon_rss_gib"] <= GOAL_ANON_GIB for m in big}
    if "store_over_ram" in ratios:
        goals[f"store_ratio_ge_{GOAL_RATIO:g}"] = ratios["store_over_ram"] >= GOAL_RATIO
    return {"ratios": ratios, "goals": goals, "met": all(goals.values()) if goals else None}


def table(modes: dict, ratios: dict) -> str:
    """The modes as a Markdown table."""
    lines = ["| mode | images | wall s | set-up s | epoch s | img/s | vs RAM | peak anon GiB | peak PSS anon GiB | peak RSS GiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    keys = ("train_images", "wall_s", "setup_s", "epoch_s", "images_per_s", "ratio", "peak_anon_rss_gib", "peak_pss_anon_gib",
            "peak_rss_gib")
    for name, r in modes.items():
        r = {**r, "ratio": ratios.get(f"{name}_over_ram", "")}
        lines.append("| " + " | ".join([name, *(str(r.get(k, "")) for k in keys)]) + " |")
    return "\n".join(lines)


def cleanup(work: Path, created: bool) -> None:
    """Remove what this script puts in ``work`` (data, caches, runs), and ``work`` itself when it made it or it is empty."""
    for child in ("data", "runs", *(p.name for p in work.glob("cache-*"))):
        shutil.rmtree(work / child, ignore_errors=True)
    if created or (work.is_dir() and not any(work.iterdir())):
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path) -> dict:
    """Generate the folder, run the chosen modes (and torchrun), and gather the result."""
    for stale in ("runs", *(p.name for p in work.glob("cache-*"))):  # of a run kept (--keep): only the images are reused
        shutil.rmtree(work / stale, ignore_errors=True)
    gen = generate(work / "data", args.images, args.classes, args.seed, args.workers)
    size = sizes(gen, args.subset)
    cgroup = memory_cgroup(args.memory_cap_gib) if args.memory_cap_gib else None
    bench = Bench(work, args.classes, args.keep, args.flags, cgroup)
    modes: dict = {}
    runners = {"ram": run_ram, "store": run_store, "stream": run_stream}
    extras: dict = {}
    for mode in args.modes:
        got = runners[mode](bench, size)
        for extra in ("decode", "reads"):
            if extra in got:
                extras[extra] = got.pop(extra)
        modes.update(got)
    for mode in ("store", "store_cold", "stream"):
        if mode in modes:
            modes[mode]["train_images"] = size["train_images"]
    result = {"images": args.images, "classes": args.classes, "train_flags": args.flags, "sizes": size, "generation": gen,
              "memory_cap_gib": args.memory_cap_gib, "modes": modes, **extras}
    if args.torchrun:
        result["torchrun"] = run_torchrun(bench, min(args.torchrun_images, size["train_images"]))
    if "store" in modes:
        size["store_bytes"] = modes["store"]["store_bytes"]
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200_000, help="JPEGs in the folder, train and val together")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--subset", type=int, default=20_000, help="training images of the in-RAM baseline")
    parser.add_argument("--modes", default="store,stream,ram", help="comma-separated, of store, stream, ram")
    parser.add_argument("--tag", default="cpu", help="results go to benchmarks/results/data-scale-<tag>.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vitlab-data-scale"),
                        help="folder for the images, caches and runs (deleted at the end unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (a rerun reuses the images)")
    parser.add_argument("--torchrun", action="store_true", help="also: cold cache, torchrun 2 processes vs 1")
    parser.add_argument("--memory-cap-gib", type=float, default=None,
                        help="run the store modes in a memory cgroup of this size (page cache included): a store larger "
                             "than the cap behaves as one larger than RAM")
    parser.add_argument("--torchrun-images", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes that generate the images")
    parser.add_argument("--seed", type=int, default=0, help="of the generated images")
    parser.add_argument("flags", nargs="*", help="more `vitlab train` flags for every run (after --), e.g. -- --data.augment none")
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := set(args.modes) - {"store", "stream", "ram"}:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    return args


def _interrupted(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the running subprocess is stopped and the work folder cleaned up."""
    raise KeyboardInterrupt


def main() -> int:
    args = parse_args()
    work = args.work.expanduser().resolve()
    created = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        result = measure(args, work)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            cleanup(work, created)
    result.update(judge(result["modes"]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_to_accuracy import machine

    result.update({"model": " ".join(MODEL), "work": str(work), "machine": machine(), "date": time.strftime("%Y-%m-%d")})
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"data-scale-{args.tag}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result["modes"], result["ratios"]))
    print(f"goals: {json.dumps(result['goals'])} -> {({True: 'met', False: 'NOT met'}).get(result['met'], 'none measured')}")
    if "decode" in result:
        print(f"decode into the store: {json.dumps(result['decode'])}")
    if "reads" in result:
        print(f"random reads from the store, cold: {json.dumps(result['reads'])}")
    if "torchrun" in result:
        t = result["torchrun"]
        print(f"torchrun: {t['torchrun']['wall_s']} s vs {t['single']['wall_s']} s in one process; store files "
              f"{t['torchrun']['store_files']} (one per split: {t['one_store_per_split']}); peak anon "
              f"{t['torchrun']['peak_anon_rss_gib']} GiB")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
