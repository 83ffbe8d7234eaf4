"""What `vitlab attention` and `vitlab inspect` write: attention overlays per image and the
paper's figures for a model, from a checkpoint, a run directory or pretrained weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vitlab.insight.attention import HeadFusion, attention_maps, rollout_and_heads
from vitlab.insight.figures import (
    mean_attention_distance,
    patch_filter_components,
    plot_attention_distance,
    plot_filter_components,
    plot_position_similarity,
    position_similarity,
)
from vitlab.insight.plots import plot_attention_grid, save_figure
from vitlab.model import ViT
from vitlab.predict import load_model_images, model_preprocess


@dataclass
class Explained:
    """Attention of one image: its top-k prediction and the maps drawn."""

    image: str
    classes: list[str]
    probs: list[float]
    figure: Path
    rollout: torch.Tensor = field(repr=False)
    heads: torch.Tensor = field(repr=False)


def require_vit(model: torch.nn.Module) -> None:
    if not isinstance(model, ViT):
        raise ValueError(f"attention maps and the paper's figures need a ViT; this checkpoint holds a "
                         f"{getattr(model, 'arch', type(model).__name__)} baseline (curves, confusion matrix and "
                         "mistakes are in its run's figures/)")


@torch.no_grad()
def explain_batch(model: ViT, info: dict, images: torch.Tensor, head_fusion: HeadFusion = "mean",
                  discard_ratio: float = 0.0, topk: int = 3, layer: int = -1) -> list[dict]:
    """Top-k predictions, rollout maps (gh, gw) and ``layer``'s (default the last) head maps (heads, gh, gw) of uint8
    images."""
    require_vit(model)
    device = next(model.parameters()).device
    logits, rollout, heads = rollout_and_heads(model, model_preprocess(model, info)(images.to(device)), head_fusion,
                                               discard_ratio, layer)
    probs = logits.float().softmax(-1).cpu()
    top = probs.topk(min(topk, probs.shape[1]), dim=1)
    classes = info["classes"]
    return [{"classes": [classes[i] for i in idx.tolist()], "probs": val.tolist(), "rollout": r.cpu(), "heads": h.cpu()}
            for val, idx, r, h in zip(top.values, top.indices, rollout, heads)]


def title_for(name: str, result: dict) -> str:
    top = ", ".join(f"{c} {p:.0%}" for c, p in zip(result["classes"], result["probs"]))
    return f"{name}\nprediction: {top}"


def write_attention_overlays(model: ViT, info: dict, paths: list[str | Path], out: str | Path,
                             head_fusion: HeadFusion = "mean", discard_ratio: float = 0.0, topk: int = 3,
                             batch_size: int = 16) -> list[Explained]:
    """One PNG per image in ``out``: the input, the rollout overlay and each last-layer head's map."""
    out = Path(out)
    written = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = load_model_images(model, info, chunk)
        for path, image, result in zip(chunk, images, explain_batch(model, info, images, head_fusion, discard_ratio, topk)):
            figure = save_figure(plot_attention_grid(image, result["rollout"], result["heads"],
                                                     title_for(Path(path).name, result)),
                                 out / f"attention_{Path(path).stem}.png")
            written.append(Explained(str(path), result["classes"], result["probs"], figure, result["rollout"],
                                     result["heads"]))
    return written


@torch.no_grad()
def attention_distance(model: ViT, info: dict, images: torch.Tensor, batch_size: int = 32,
                       progress: bool | None = False) -> torch.Tensor:
    """Mean attention distance (layers, heads) in pixels over uint8 ``images``."""
    device = next(model.parameters()).device
    preprocess = model_preprocess(model, info)
    total = None
    batches = range(0, len(images), batch_size)
    for start in tqdm(batches, desc="attention distance", unit="batch", leave=False,
                      disable=None if progress is None else not progress):
        chunk = images[start:start + batch_size]
        _, maps = attention_maps(model, preprocess(chunk.to(device)))
        part = mean_attention_distance(maps, model.cfg.grid_size, model.cfg.patch_size, model.num_prefix_tokens).cpu()
        total = part * len(chunk) if total is None else total + part * len(chunk)
    return total / len(images)


def write_model_figures(model: ViT, info: dict, out: str | Path, images: torch.Tensor | None = None,
                        name: str = "", progress: bool | None = False) -> dict[str, Path]:
    """The paper's figure 7 panels as PNGs in ``out``: filters, position similarity, attention distance.

    Filters need a linear patch embedding (not ``conv_stem``), position similarity a position
    embedding, and attention distance ``images`` (uint8, the model's size); a panel that cannot be
    drawn is left out. Returns {figure: file}.
    """
    require_vit(model)
    out = Path(out)
    suffix = f"\n{name}" if name else ""
    written = {}
    if model.patch_embed.stem is None:
        components, explained = patch_filter_components(model)
        written["filters"] = save_figure(plot_filter_components(components, explained,
                                                                f"Patch-embedding filters, principal components{suffix}"),
                                         out / "patch_embedding_pca.png")
    if model.pos_embed is not None:
        written["position_similarity"] = save_figure(
            plot_position_similarity(position_similarity(model), f"Position embedding similarity{suffix}"),
            out / "position_similarity.png")
    if images is not None and len(images):
        distance = attention_distance(model, info, images, progress=progress)
        written["attention_distance"] = save_figure(
            plot_attention_distance(distance, tuple(model.cfg.img_size),
                                    f"Mean attention distance ({len(images)} images){suffix}"),
            out / "attention_distance.png")
    return written
