"""A trained model as a Hugging Face Hub folder that timm loads: ``config.json``, ``model.safetensors``, ``README.md``.

``config.json`` follows timm's layout (``architecture`` + ``model_args`` + ``pretrained_cfg`` with the
preprocessing, ``label_names``), so ``timm.create_model("local-dir:DIR", pretrained=True)`` (or ``hf-hub:user/name``
once uploaded) rebuilds the same network; vitlab's own description rides along under ``"vitlab"``. The weights
keep their names, which are timm's. Models timm cannot build (a convolutional stem, sin-cos positions, the
manual patch embedding) are written for vitlab only, and the card says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vitlab.atomic import atomic_write, atomic_write_text
from vitlab.model import ViT, ViTConfig
from vitlab.training.checkpoint import load_checkpoint

TIMM_ARCHITECTURE = "vit_base_patch16_224"  # any ViT name: model_args give the real sizes


def timm_incompatibility(cfg: ViTConfig) -> str | None:
    """Why timm's VisionTransformer cannot hold this model, or None."""
    if cfg.patch_embed != "conv":
        return f"patch_embed={cfg.patch_embed!r} (timm has the strided-convolution patch embedding only)"
    if cfg.pos_embed == "sincos":
        return "pos_embed='sincos' (timm's VisionTransformer learns its position embedding)"
    return None


def timm_config(cfg: ViTConfig, classes: list[str], preprocessing: dict[str, Any]) -> dict[str, Any]:
    """timm's config.json for this architecture and its preprocessing."""
    crop = preprocessing.get("crop_pct", 1.0)
    return {
        "architecture": TIMM_ARCHITECTURE,
        "num_classes": cfg.num_classes,
        "num_features": cfg.embed_dim,
        "global_pool": "token" if cfg.pool == "cls" else "avg",
        "label_names": list(classes),
        "model_args": {
            "img_size": list(cfg.img_size), "patch_size": list(cfg.patch_size), "in_chans": cfg.in_chans,
            "embed_dim": cfg.embed_dim, "depth": cfg.depth, "num_heads": cfg.num_heads, "mlp_ratio": cfg.mlp_ratio,
            "qkv_bias": cfg.qkv_bias, "class_token": cfg.class_token, "no_embed_class": False,
            "global_pool": "token" if cfg.pool == "cls" else "avg", "fc_norm": False,  # vitlab: norm, then pool
            "pos_embed": "learn" if cfg.pos_embed == "learned" else "none", "dynamic_img_size": cfg.dynamic_img_size,
        },
        "pretrained_cfg": {
            "input_size": [cfg.in_chans, *cfg.img_size], "fixed_input_size": not cfg.dynamic_img_size,
            "interpolation": preprocessing.get("interpolation", "bicubic"), "crop_pct": crop,
            "crop_mode": preprocessing.get("crop_mode", "center"),
            "mean": list(preprocessing["mean"]), "std": list(preprocessing["std"]), "num_classes": cfg.num_classes,
            "first_conv": "patch_embed.proj", "classifier": "head",
        },
    }


def write_hub_folder(source: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """The Hub folder of a vitlab checkpoint or run directory (its best checkpoint)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} already exists and is not empty; choose another --dir or pass --overwrite")
    model, info = load_checkpoint(source)
    if not isinstance(model, ViT):
        raise ValueError(f"{source} holds a {type(model).__name__} baseline; only ViTs are written as Hub folders")
    cfg, why_not = model.cfg, timm_incompatibility(model.cfg)
    config = timm_config(cfg, info["classes"], info["preprocessing"]) if why_not is None else {}
    config["vitlab"] = {key: info[key] for key in ("model", "classes", "preprocessing", "run_config", "metrics", "epoch")
                        if key in info}
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "model.safetensors", lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    atomic_write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    extras = copy_run_files(source, out)
    atomic_write_text(out / "README.md", model_card(source, info, why_not, extras))
    return out


RUN_FILES = {"config.yaml": "run_config.yaml", "figures/curves.png": "curves.png", "figures/confusion.png": "confusion.png"}


def copy_run_files(source: str | Path, out: Path) -> list[str]:
    """The run's resolved configuration and its curves and confusion figures, next to the weights; their names."""
    run_dir = Path(source) if Path(source).is_dir() else Path(source).parent
    copied = []
    for name, target in RUN_FILES.items():
        if (run_dir / name).is_file():
            data = (run_dir / name).read_bytes()
            atomic_write(out / target, lambda tmp, data=data: tmp.write_bytes(data))
            copied.append(target)
    return copied


def model_card(source: str | Path, info: dict[str, Any], why_not: str | None, extras: list[str] = ()) -> str:
    """A README.md from the run: data, recipe, result, how to load it."""
    run = info.get("run_config", {})
    data, train, ft = run.get("data", {}), run.get("train", {}), run.get("finetune")
    metrics = info.get("metrics", {})
    load = ("```python\nimport timm\nmodel = timm.create_model(\"hf-hub:USER/NAME\", pretrained=True)  # or local-dir:DIR\n```"
            if why_not is None else f"timm cannot build this model ({why_not}); load it with vitlab.")
    lines = [
        "---", "library_name: timm" if why_not is None else "library_name: vitlab", "tags: [image-classification, vitlab]",
        "---", "", f"# {Path(str(source)).name}", "",
        f"A Vision Transformer trained with [vitlab](https://github.com/) on `{data.get('dataset')}`"
        + (f" from `{ft['pretrained']}` ({ft['mode']} fine-tuning)" if ft else " from scratch") + ".", "",
        f"- classes: {len(info.get('classes', []))} ({', '.join(map(str, info.get('classes', [])[:10]))}"
        f"{', ...' if len(info.get('classes', [])) > 10 else ''})",
        f"- validation accuracy: {metrics.get('val_acc', float('nan')):.4f} after epoch {info.get('epoch')}",
        f"- recipe: {train.get('epochs')} epochs, {train.get('optimizer')} lr {train.get('lr')}, batch {train.get('batch_size')}, "
        f"augmentation {data.get('augment')}",
        f"- preprocessing: {json.dumps(info.get('preprocessing', {}))}",
        "", "## Load", "", load, "", "```python\nimport vitlab\nvitlab.predict(\"DIR\", [\"photo.jpg\"])\n```", "",
        "The full configuration is under `vitlab` in config.json; `vitlab train --config` takes its `run_config`.",
    ]
    if "run_config.yaml" in extras:
        command = "vitlab finetune" if ft else "vitlab train"
        lines += ["", "## Reproduce", "", f"```bash\n{command} --config run_config.yaml --run_dir runs/again\n```"]
    figures = [f"![{name.removesuffix('.png')}]({name})" for name in extras if name.endswith(".png")]
    if figures:
        lines += ["", "## Training", "", *figures]
    if ft:
        source = pretrained_source(ft["pretrained"])
        licence = f"licence **{source['license']}**" if source.get("license") else "their licence"
        paper = f" ({source['paper']})" if source.get("paper") else ""
        lines += ["", "## Pretrained weights", "", f"Fine-tuned from `{ft['pretrained']}`{paper}; {licence} applies to "
                  "this model too."]
        if source.get("license"):
            lines.insert(3, f"license: {source['license']}")
    return "\n".join(lines) + "\n"


def pretrained_source(name: str) -> dict[str, Any]:
    """What the registry knows about the weights a run was fine-tuned from (licence, paper), or nothing."""
    from vitlab.pretrained.load import registry_entry_for

    entry = registry_entry_for(str(name))
    return dict(entry.meta) if entry is not None else {}


def load_hub_folder(repo_or_dir: str | Path, device: str | torch.device = "cpu") -> tuple[ViT, dict[str, Any]]:
    """A folder written by :func:`write_hub_folder`, or its Hub repo, as (model, info) like a checkpoint."""
    model = ViT.from_pretrained(repo_or_dir, device=device)
    return model, model.pretrained_cfg


def push(folder: str | Path, repo: str, private: bool = False) -> str:
    """Upload a Hub folder to ``repo`` (``user/name``); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, private=private, exist_ok=True)
        return str(api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="vitlab push"))
    except Exception as exc:  # offline, not logged in, no rights: one message, the folder is kept where --dir put it
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise OSError(f"could not upload to the Hub repository {repo} ({type(exc).__name__}: {first}); check "
                      "`huggingface-cli login` and the network, or write the folder with --dir and upload it later") from exc
