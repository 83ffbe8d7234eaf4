"""`vitlab report RUN_DIR`: one self-contained HTML page about a run.

Config, final metrics, curves, confusion matrix, worst mistakes and a few attention overlays,
with every image embedded as a data URI: the page opens from disk and works offline.
"""

from __future__ import annotations

import base64
import html
import json
import time
from pathlib import Path

import torch
import yaml

from vitlab.atomic import atomic_write_text
from vitlab.baselines import model_arch, model_flops
from vitlab.insight.run_figures import FIGURES_DIR, split_images, worst_mistakes, write_run_figures
from vitlab.model import ViT
from vitlab.progress import steps

REPORT_FILE = "report.html"
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#b8c0cc;font-size:13px}
main{max-width:1180px;margin:0 auto;padding:12px 32px 40px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:14px 20px;margin:16px 0}
h2{font-size:17px;margin:4px 0 12px}table{border-collapse:collapse;font-size:14px}
td,th{padding:4px 14px 4px 0;text-align:left}th{color:#5b6575;font-weight:600}
img{max-width:100%;height:auto;display:block;margin:6px 0}pre{background:#f1f3f6;padding:10px;overflow:auto;font-size:12px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:12px}
footer{color:#8a94a3;font-size:12px;text-align:center;margin:20px}
"""
# Marks the page once every image has decoded (checked by the browser test, shown in the footer).
CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-rendered', ok + '/' + imgs.length);
  var f = document.getElementById('render-check');
  if (f) { f.textContent = ok + ' of ' + imgs.length + ' images rendered'; }
});
"""


def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _img(png: Path, alt: str) -> str:
    return f'<img src="{_data_uri(png)}" alt="{html.escape(alt)}">'


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>"


def _read_history(run_dir: Path) -> list[dict]:
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        raise FileNotFoundError(f"{run_dir} has no metrics.jsonl: is it a vitlab run directory with a finished epoch?")
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def _checkpoint(run_dir: Path) -> Path:
    for name in ("best.safetensors", "last.safetensors"):
        if (run_dir / name).exists():
            return run_dir / name
    raise FileNotFoundError(f"{run_dir} holds no best.safetensors or last.safetensors checkpoint")


def build_report(run_dir: str | Path, out: str | Path | None = None, attention_images: int = 4,
                 device: str = "cpu", progress: bool | None = False) -> Path:
    """Write the run's HTML report (default ``RUN_DIR/report.html``); draws missing figures first."""
    with steps("vitlab report", 4, progress) as step:
        return _build_report(Path(run_dir), out, attention_images, device, step)


def _build_report(run_dir: Path, out: str | Path | None, attention_images: int, device: str, step) -> Path:
    from vitlab.evaluate import checkpoint_with_data
    from vitlab.insight.explain import explain_batch, title_for
    from vitlab.insight.plots import plot_attention_grid, save_figure
    from vitlab.training.trainer import evaluate

    step("loading the run and its data")
    history = _read_history(run_dir)
    checkpoint = _checkpoint(run_dir)
    model, info, data, preprocess = checkpoint_with_data(checkpoint, device=device, whole_splits=False)
    figures = run_dir / FIGURES_DIR
    evaluation = None
    step("evaluating")
    if not all((figures / f"{n}.png").exists() for n in ("curves", "confusion", "mistakes")):
        evaluation = evaluate(model, data.val, preprocess, 256, torch.device(device), num_classes=len(info["classes"]))
        write_run_figures(run_dir, history, info["classes"], evaluation, data.val, title=f"{data.name}: {run_dir.name}")

    # attention overlays: validation images spread over the split (folders are sorted by class), and the worst mistake
    count = min(attention_images, len(data.val))
    picks = sorted({round(i * (len(data.val) - 1) / max(1, count - 1)) for i in range(count)}) if count else []
    mistakes = json.loads((figures / "mistakes.json").read_text()) if (figures / "mistakes.json").exists() else []
    if evaluation is not None:
        mistakes = [{"index": i} for i in worst_mistakes(data.val.labels, evaluation["predicted"],
                                                          evaluation["confidence"], 1)]
    picks += [m["index"] for m in mistakes[:1] if m["index"] not in picks]
    overlays = []
    step("attention overlays")
    if picks and isinstance(model, ViT):  # a CNN baseline has no attention to show
        images = split_images(data.val, picks)
        for index, image, result in zip(picks, images, explain_batch(model, info, images)):
            true = info["classes"][int(data.val.labels[index])]
            name = f"validation image {index} (true class: {true})"
            overlays.append(save_figure(plot_attention_grid(image, result["rollout"], result["heads"],
                                                            title_for(name, result)),
                                        figures / f"attention_val_{index}.png"))

    step("writing the page")
    validated = [h for h in history if "val_acc" in h]  # every epoch unless --train.eval_every skips some
    best, final, last_val = max(validated, key=lambda h: h["val_acc"]), history[-1], validated[-1]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else info.get(
        "run_config", {})
    c = model.cfg
    architecture = (f"{c.depth} blocks, dim {c.embed_dim}, {c.num_heads} heads, patch {c.patch_size[0]}x{c.patch_size[1]}"
                    if isinstance(model, ViT) else f"convolutional baseline {model_arch(model)}")
    metrics = [
        ("data set", f"{data.name}: {len(data.train):,} train / {len(data.val):,} validation images, "
                     f"{data.num_classes} classes"),
        ("model", f"{model.num_params():,} parameters, {model_flops(model) / 1e6:.1f} MFLOPs per image, "
                  f"{architecture} on {model.cfg.img_size[0]}x{model.cfg.img_size[1]}"),
        ("final validation accuracy", f"{100 * last_val['val_acc']:.2f}% (epoch {last_val['epoch']})"),
        ("best validation accuracy", f"{100 * best['val_acc']:.2f}% (epoch {best['epoch']})"),
        ("final train accuracy", f"{100 * final['train_acc']:.2f}% (with augmentation and dropout)"),
        ("final losses", f"train {final['train_loss']:.4f}, validation {last_val['val_loss']:.4f} (epoch {last_val['epoch']})"),
        ("training time", f"{final['elapsed_s']:.0f} s, {final.get('train_images_per_s', 0):.0f} images/s"),
    ]
    if info.get("run_config", {}).get("finetune"):
        ft = info["run_config"]["finetune"]
        metrics.insert(2, ("fine-tuned from", f"{ft.get('pretrained')} ({ft.get('mode')})"))
    sections = [
        f"<section><h2>Summary</h2>{_table(metrics)}</section>",
        f"<section><h2>Training curves</h2>{_img(figures / 'curves.png', 'training curves')}</section>",
        '<section><div class="grid">'
        f"<div><h2>Confusion matrix</h2>{_img(figures / 'confusion.png', 'confusion matrix')}</div>"
        f"<div><h2>Most confident mistakes</h2>{_img(figures / 'mistakes.png', 'worst mistakes')}</div>"
        "</div></section>",
    ]
    if overlays:
        sections.append("<section><h2>Attention (rollout and the last layer's heads)</h2>"
                        + "".join(_img(p, p.stem) for p in overlays) + "</section>")
    sections.append("<section><h2>Configuration</h2><details open><summary>config.yaml</summary>"
                    f"<pre>{html.escape(yaml.safe_dump(cfg, sort_keys=False))}</pre></details></section>")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>vitlab report: {html.escape(run_dir.name)}</title><style>{CSS}</style>"
        f"<script>{CHECK_SCRIPT}</script></head><body>"
        f"<header><h1>vitlab run: {html.escape(run_dir.name)}</h1>"
        f"<p>{html.escape(str(run_dir.resolve()))} · checkpoint {checkpoint.name} · written "
        f"{time.strftime('%Y-%m-%d %H:%M')}</p></header><main>{''.join(sections)}</main>"
        '<footer>vitlab · <span id="render-check"></span></footer></body></html>\n'
    )
    return atomic_write_text(Path(out) if out else run_dir / REPORT_FILE, page)
