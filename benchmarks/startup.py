"""Start-up cost: `vitlab predict vit_tiny PHOTO` against a plain timm script doing the same, side by side.

Each command runs in a fresh process (import, build the model from the local weights file, preprocess, top-5), the
two alternated, and the median wall time of each is kept; also the time to build ViT-B/16 ready for loading
(`ViT.without_init`) and with random initialisation (`ViT(cfg)`). Needs the weights file in $VITLAB_WEIGHTS_DIR and a
photo ($VITLAB_DATA_DIR/imagenet-samples). Writes benchmarks/results/startup-cpu.json.

    python benchmarks/startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
TIMM_SCRIPT = """
import sys, torch, timm
from PIL import Image
torch.set_num_threads(2)
model = timm.create_model(sys.argv[1], pretrained=True, pretrained_cfg_overlay=dict(file=sys.argv[2])).eval()
transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
with torch.no_grad():
    probs = model(transform(Image.open(sys.argv[3]).convert("RGB")).unsqueeze(0)).softmax(-1)
print(probs.topk(5).indices.tolist())
"""


def wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def build_seconds(repeats: int) -> dict[str, float]:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from vitlab.model import ViT, model_config

    torch.set_num_threads(2)
    cfg = model_config("vit_base_patch16_224")
    out = {}
    for label, build in (("without_init", lambda: ViT.without_init(cfg)), ("random_init", lambda: ViT(cfg))):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            build()
            times.append(time.perf_counter() - start)
        out[label] = round(min(times), 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    weights = Path(os.environ.get("VITLAB_WEIGHTS_DIR", "../shared/weights")) / f"{NAME}.safetensors"
    photo = next(iter(sorted((Path(os.environ.get("VITLAB_DATA_DIR", "../shared/data")) / "imagenet-samples").glob("*.JPEG"))))
    ours = [sys.executable, "-m", "vitlab.cli", "predict", "vit_tiny", str(photo), "--topk", "5"]
    timm = [sys.executable, "-c", TIMM_SCRIPT, NAME, str(weights), str(photo)]
    env_note = {"VITLAB_WEIGHTS_DIR": str(weights.parent)}
    os.environ.update(env_note)
    wall(ours), wall(timm)  # warm the page cache for both
    times = {"vitlab": [], "timm": []}
    for _ in range(args.repeats):
        times["vitlab"].append(wall(ours))
        times["timm"].append(wall(timm))
    medians = {k: round(statistics.median(v), 2) for k, v in times.items()}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_to_accuracy import machine

    result = {"predict_wall_s": medians, "ratio_vitlab_over_timm": round(medians["vitlab"] / medians["timm"], 3),
              "runs": times, "vit_b16_build_s": build_seconds(3), "photo": photo.name, "machine": machine(),
              "date": time.strftime("%Y-%m-%d")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "startup-cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("predict_wall_s", "ratio_vitlab_over_timm", "vit_b16_build_s")}))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
