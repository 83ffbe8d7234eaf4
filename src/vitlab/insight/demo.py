"""``vitlab demo``: a Gradio page to try a model on a photo — top-k classes, the attention-rollout overlay and the
per-head maps of a chosen layer. Optional extra ``vitlab[demo]``; binds to localhost, ``--share`` off by default."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitlab.insight.attention import overlay
from vitlab.insight.explain import explain_batch, require_vit
from vitlab.insight.plots import figure_array, plot_head_maps
from vitlab.model import ViT
from vitlab.predict import model_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
DISPLAY = 320
"""Pixels the page gives the input and the overlay (small models' inputs are enlarged to it)."""


@dataclass
class Explanation:
    """What the page shows for one image."""

    probabilities: dict[str, float]
    """The top-k classes and their probabilities."""
    overlay: np.ndarray
    """The attention rollout over the model's input, float (H, W, 3) in [0, 1]."""
    heads: np.ndarray
    """A picture of the chosen layer's per-head maps, uint8 (H, W, 3)."""


@torch.no_grad()
def explain_image(model: ViT, info: dict[str, Any], image, layer: int = -1, topk: int = 5) -> Explanation:
    """Predict one image (a PIL image, file path or tensor) and draw where the model looked."""
    pixels = model_image(image, model, info)  # uint8 (C, H, W)
    layer = layer % model.cfg.depth
    [result] = explain_batch(model, info, pixels[None], topk=topk, layer=layer)  # rollout (gh, gw), heads (H, gh, gw)
    return Explanation(dict(zip(result["classes"], result["probs"])), overlay(pixels, result["rollout"]).numpy(),
                       figure_array(plot_head_maps(pixels, result["heads"], layer)))


def enlarged(picture: np.ndarray, size: int = DISPLAY) -> np.ndarray:
    """A float (H, W, 3) picture in [0, 1] as uint8, enlarged with square pixels when smaller than ``size``."""
    factor = max(1, size // max(picture.shape[:2]))
    pixels = (picture * 255).round().astype(np.uint8)
    return pixels.repeat(factor, axis=0).repeat(factor, axis=1)


def example_images(sources: list[str], data_path: str | None = None, per_class: int = 1, limit: int = 12) -> list[str]:
    """Image files to offer as examples: ``sources`` (files or folders), else one per class of the run's image folder."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"--examples {source}: no such file or folder")
    if not sources and data_path:
        root = Path(data_path)
        split = next((root / s for s in ("val", "test", "train") if (root / s).is_dir()), root)
        for folder in sorted(p for p in split.iterdir() if p.is_dir()) if split.is_dir() else []:
            found += sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:per_class]
    return [str(p) for p in found[:limit]]


def build_demo(model: ViT, info: dict[str, Any], title: str, examples: list[str], topk: int = 5):
    """The Gradio page: an image (upload or example), a layer slider, and the three outputs."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home
    import gradio as gr

    require_vit(model)
    depth = model.cfg.depth

    def run(image, layer):
        if image is None:
            raise gr.Error("Upload an image or pick an example first.")
        result = explain_image(model, info, image.convert("RGB"), int(layer) - 1, topk)
        return result.probabilities, enlarged(result.overlay), result.heads

    with gr.Blocks(title=f"vitlab demo: {title}") as demo:
        gr.Markdown(f"## vitlab demo: {title}\n{len(info['classes'])} classes; the overlay is the attention rollout, "
                    "the maps below are what each head of the chosen layer's read-out token attends to.")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="image", elem_id="input-image", height=DISPLAY)
                layer = gr.Slider(1, depth, value=depth, step=1, label=f"layer for the per-head maps (1-{depth})")
                button = gr.Button("Predict", variant="primary", elem_id="predict")
            with gr.Column():
                label = gr.Label(num_top_classes=topk, label="prediction", elem_id="prediction")
                rollout = gr.Image(label="attention rollout", elem_id="rollout", height=DISPLAY)
        heads = gr.Image(label="per-head attention of the chosen layer", elem_id="heads")
        if examples:
            gr.Examples(examples=[[path] for path in examples], inputs=[image], label="examples")
        button.click(run, inputs=[image, layer], outputs=[label, rollout, heads])
    return demo


def launch_demo(source: str, examples: list[str] | None = None, host: str = "127.0.0.1", port: int | None = None,
                share: bool = False, topk: int = 5, device: str = "auto", block: bool = True):
    """Load ``source`` (a run, checkpoint, registry name or pushed folder) and serve its page; returns the app."""
    from vitlab.device import resolve_device
    from vitlab.predict import load_model

    model, info = load_model(source, device=resolve_device(device))
    require_vit(model)
    data_path = (info.get("run_config") or {}).get("data", {}).get("path")
    shown = example_images(examples or [], data_path)
    demo = build_demo(model, info, Path(str(source)).name, shown, topk)
    allowed = sorted({str(Path(p).resolve().parent) for p in shown})  # Gradio serves only files it is allowed to
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block, allowed_paths=allowed,
                quiet=not block)
    return demo
